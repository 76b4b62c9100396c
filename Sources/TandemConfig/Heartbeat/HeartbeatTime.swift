/// Heartbeat's syntax for times in ha.cf (`keepalive 2`, `keepalive 1.5`, `keepalive 500ms`).
///
/// Heartbeat reads these with cluster-glue's `cl_get_msec`: a number, optionally with a decimal point, is seconds;
/// a `ms`/`msec` suffix means milliseconds and `us`/`usec` microseconds, in any letter case. Tandem accepts the same,
/// plus an explicit `s`/`sec` suffix (a Tandem addition: Heartbeat rejects `2s`, and operators keep writing it).
///
/// Heartbeat rounds every time to a whole millisecond (so `499us` is 0 and `keepalive 499us` is refused); Tandem
/// keeps microseconds, which is exact for every value Heartbeat accepts.
public enum HeartbeatTime {
    /// The longest time Tandem accepts. No Heartbeat timer is meant to run for a day; a larger value is a typo
    /// (an extra zero, or `ms` forgotten), and the bound keeps the arithmetic far from overflow.
    public static let durationMax: Duration = .seconds(24 * 60 * 60)

    /// Why a text is not a time. Each case carries the text as written, for the message.
    public enum ParseError: Error, Sendable, Hashable {
        /// Not a number with an optional unit.
        case notATime(String)
        /// A minus sign: Heartbeat has no negative times.
        case negative(String)
        /// More decimals than a microsecond holds.
        case tooPrecise(String)
        /// Over `durationMax`.
        case tooLarge(String)

        /// A sentence saying what was expected and what was found.
        public var message: String {
            switch self {
            case .notATime(let text):
                "expected a time such as 2, 1.5 or 500ms, got '\(text)'"
            case .negative(let text):
                "expected a time that is not negative, such as 2, 1.5 or 500ms, got '\(text)'"
            case .tooPrecise(let text):
                "'\(text)' is finer than the microsecond Tandem keeps; expected at most 6 decimal places for "
                    + "seconds, 3 for ms and none for us"
            case .tooLarge(let text):
                "'\(text)' is longer than 24 hours (86400 seconds), the longest time Tandem accepts"
            }
        }
    }

    /// Digits accepted before the decimal point once leading zeros are dropped: 86400 seconds needs 5, 86400000000 us
    /// needs 11. Twelve digits times a million (the largest unit in microseconds) stays below `Int64.max`.
    private static let integerDigitsMax = 12

    /// Parses one ha.cf time field.
    public static func parse(_ text: String) -> Result<Duration, ParseError> {
        if text.hasPrefix("-") { return .failure(.negative(text)) }
        let numberText = text.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
        guard let microsecondsPerUnit = unitMicroseconds(text.dropFirst(numberText.count).lowercased()) else {
            return .failure(.notATime(text))
        }
        let parts = numberText.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, parts.contains(where: { !$0.isEmpty }) else { return .failure(.notATime(text)) }
        let integerDigits = parts[0].drop { $0 == "0" }
        let fractionDigits = parts.count == 2 ? dropTrailingZeros(parts[1]) : ""
        guard integerDigits.count <= integerDigitsMax else { return .failure(.tooLarge(text)) }
        // The unit's size in microseconds is a power of ten; its exponent is how many decimals can be kept.
        let fractionDigitsMax = String(microsecondsPerUnit).count - 1
        guard fractionDigits.count <= fractionDigitsMax else { return .failure(.tooPrecise(text)) }

        let integerValue = Int64(integerDigits) ?? 0
        let paddedFraction = fractionDigits + String(repeating: "0", count: fractionDigitsMax - fractionDigits.count)
        let fractionMicroseconds = Int64(paddedFraction) ?? 0
        let microseconds = integerValue * microsecondsPerUnit + fractionMicroseconds
        let duration = Duration.microseconds(microseconds)
        guard duration <= durationMax else { return .failure(.tooLarge(text)) }
        return .success(duration)
    }

    /// Formats a duration in the syntax above, in the largest unit that is exact: `2s`, `500ms`, `1500us`.
    public static func format(_ duration: Duration) -> String {
        let microseconds = microsecondsOf(duration)
        if microseconds % 1_000_000 == 0 { return "\(microseconds / 1_000_000)s" }
        if microseconds % 1_000 == 0 { return "\(microseconds / 1_000)ms" }
        return "\(microseconds)us"
    }

    /// The whole microseconds in `duration`, rounding toward zero.
    static func microsecondsOf(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    }

    private static func unitMicroseconds(_ suffix: String) -> Int64? {
        switch suffix {
        case "", "s", "sec": 1_000_000
        case "ms", "msec": 1_000
        case "us", "usec": 1
        default: nil
        }
    }

    private static func dropTrailingZeros(_ digits: Substring) -> Substring {
        var result = digits
        while result.last == "0" { result.removeLast() }
        return result
    }
}
