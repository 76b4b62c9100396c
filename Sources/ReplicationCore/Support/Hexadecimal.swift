extension FixedWidthInteger where Self: UnsignedInteger {
    /// Upper-case hexadecimal padded to the type's full width ("00000000000000AB" for a UInt64), as drbdadm prints
    /// generation UUIDs: values of one type line up in logs and tables.
    public var fixedWidthHex: String {
        let digits = String(self, radix: 16, uppercase: true)
        return String(repeating: "0", count: Swift.max(0, bitWidth / 4 - digits.count)) + digits
    }

    /// The same with a "0x" prefix, for magic numbers, flags and checksums in messages.
    public var prefixedHex: String { "0x" + fixedWidthHex }
}
