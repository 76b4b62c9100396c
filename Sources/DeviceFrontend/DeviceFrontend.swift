/// The device frontend: the replicated resource as a real Linux block device (one file served through libfuse3,
/// with a loop device attached to it) and as an NBD export.
public enum DeviceFrontend {}
