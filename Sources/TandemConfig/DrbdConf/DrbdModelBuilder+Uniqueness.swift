/// Checks across all resources: what DRBD requires to be unique on a machine.
extension DrbdModelBuilder {
    mutating func checkUniqueness(_ config: DrbdConfig) {
        var endpoints: [String: (resource: String, location: SourceLocation)] = [:]
        var minors: [String: (resource: String, location: SourceLocation)] = [:]
        for resource in config.resources {
            for host in resource.hosts {
                if let address = host.address {
                    let key = address.value.endpoint
                    if let first = endpoints[key] {
                        report(.drbdAddressInUse, at: address.location,
                               "address \(key) is already used by resource '\(first.resource)' at \(first.location)")
                    } else {
                        endpoints[key] = (resource.name.value, address.location)
                    }
                }
                checkVolumes(of: host, in: resource, minors: &minors)
            }
            checkSecret(resource)
        }
    }

    private mutating func checkVolumes(
        of host: DrbdHost, in resource: DrbdResource, minors: inout [String: (resource: String, location: SourceLocation)]
    ) {
        let hostKeys = host.isFloating ? [host.displayName] : host.names.map(\.value)
        for volume in host.volumes {
            for hostKey in hostKeys {
                let key = "\(hostKey):\(volume.device.value.minor)"
                if let first = minors[key] {
                    report(.drbdMinorInUse, at: volume.device.location,
                           "minor \(volume.device.value.minor) on host '\(hostKey)' is already used by resource '\(first.resource)' at \(first.location)")
                } else {
                    minors[key] = (resource.name.value, volume.device.location)
                }
            }
        }
    }

    /// DRBD limits the secret to 64 characters (SHARED_SECRET_MAX); a longer one would be cut silently.
    private mutating func checkSecret(_ resource: DrbdResource) {
        guard let secret = resource.options.located(.net, "shared-secret"), case .string(let text) = secret.value,
              text.utf8.count > 64 else { return }
        report(.drbdSecretTooLong, at: secret.location,
                   "the shared-secret of resource '\(resource.name.value)' is \(text.utf8.count) bytes; the limit is 64")
    }
}
