/// A value together with where it was written, so that checks run after parsing (for example `tandem check`'s
/// cross-file checks) can still point at the right file, line and column.
public struct Located<Value: Sendable>: Sendable {
    public var value: Value
    public var location: SourceLocation

    public init(_ value: Value, at location: SourceLocation) {
        self.value = value
        self.location = location
    }
}

extension Located: Equatable where Value: Equatable {
    /// Two located values are equal when their values are: a model parsed back from `dump` output is the same
    /// model even though every position differs.
    public static func == (lhs: Located, rhs: Located) -> Bool { lhs.value == rhs.value }
}

extension Located: Hashable where Value: Hashable {
    public func hash(into hasher: inout Hasher) { hasher.combine(value) }
}
