// Linux facilities Swift cannot reach directly: ioctl(2) is variadic, and O_DIRECT, statx's direct-I/O fields and
// pthread_setname_np are only declared with _GNU_SOURCE. Each function returns 0 or an errno value; nothing here keeps state.
#ifndef C_TANDEM_STORAGE_H
#define C_TANDEM_STORAGE_H

#include <stdint.h>

/// The O_DIRECT open flag of this platform (its value differs between architectures).
int ctandem_o_direct(void);

/// BLKGETSIZE64: the size in bytes of the block device open on `fd`.
int ctandem_block_device_size(int fd, uint64_t *size_bytes);

/// BLKSSZGET: the logical block size of the block device open on `fd`, the smallest unit of direct I/O.
int ctandem_block_device_logical_block_size(int fd, uint32_t *size_bytes);

/// statx(STATX_DIOALIGN) on the file open on `fd`. Returns 0 and sets `*known` to 1 with both alignments when the
/// file system reports them (an offset alignment of 0 then means it does not support direct I/O on this file);
/// returns 0 with `*known` 0 when the kernel or file system does not say.
int ctandem_direct_io_alignment(int fd, int *known, uint32_t *offset_align, uint32_t *memory_align);

/// Makes `length` bytes at `offset` read as zeroes without writing them: fallocate(PUNCH_HOLE|KEEP_SIZE) on a
/// file (the blocks are freed), BLKZEROOUT on a block device (which may unmap them). EOPNOTSUPP means the caller
/// must write zeroes itself.
int ctandem_zero_range(int fd, int is_block_device, uint64_t offset, uint64_t length);

/// Names the calling thread (at most 15 characters are kept), so that `top -H` and stack dumps show I/O threads.
void ctandem_name_current_thread(const char *name);

/// pipe2(fds, O_CLOEXEC): both ends close-on-exec from the start, so that a child spawned by another thread never
/// inherits them. Returns 0 or -1 with errno set.
int ctandem_pipe_cloexec(int fds[2]);

/// Opens /dev/loopN, making the node from /sys/block/loopN/dev first when it is missing (a /dev without udev).
/// Returns the descriptor, or -1 with errno set.
int ctandem_open_loop_node(int number, int flags);

/// Attaches the file open on `file_fd` (read-write) to a free loop device: LOOP_CTL_GET_FREE, then LOOP_CONFIGURE
/// with LO_FLAGS_DIRECT_IO when `direct_io` is set, retrying when another process takes the free device first.
/// `backing_name` is recorded in the loop's status (LO_NAME_SIZE, so at most 63 bytes are kept): a tag that
/// finds the device again after the process that attached it died. Sets `*loop_number` to N of /dev/loopN.
/// The kernel may still fall back to buffered I/O; the caller checks /sys/block/loopN/loop/dio.
int ctandem_loop_attach(int file_fd, int direct_io, const char *backing_name, int *loop_number);

/// LOOP_CLR_FD on the loop device open on `loop_fd`. A device that is still open elsewhere is not detached: the
/// kernel marks it for detaching on last close (autoclear) and still returns 0, so the caller checks sysfs.
int ctandem_loop_detach(int loop_fd);

/// The name recorded at attach time (`backing_name`, at most 63 bytes) of the loop device open on `loop_fd`, into
/// `name` (64 bytes, NUL-terminated).
int ctandem_loop_recorded_name(int loop_fd, char *name);

/// Clears the autoclear flag a refused detach left on the loop device open on `loop_fd`.
int ctandem_loop_clear_autoclear(int loop_fd);

/// Hardening for a process that serves a block device from user space: PR_SET_IO_FLUSHER, so that memory
/// reclaim does not wait on writeback that needs this process, and mlockall(MCL_CURRENT | MCL_FUTURE |
/// MCL_ONFAULT), so that its pages are never swapped out (faulted in only when touched, so thread stacks stay
/// small). Returns 0, or the errno of the first step that failed (`*failed_step` 1 or 2).
int ctandem_harden_io_daemon(int *failed_step);

/// setns(namespace_fd, CLONE_NEWNET): moves the calling thread (only it) into the network namespace open on
/// `namespace_fd`. Returns 0, or -1 with errno set.
int ctandem_enter_network_namespace(int namespace_fd);
#endif
