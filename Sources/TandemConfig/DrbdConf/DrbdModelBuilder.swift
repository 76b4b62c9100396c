/// The semantic pass over a drbd.conf syntax tree; see `DrbdConfParser`.
struct DrbdModelBuilder {
    let document: DrbdDocument
    var log = DiagnosticLog()

    init(document: DrbdDocument) {
        self.document = document
    }

    mutating func build() -> DrbdConfig {
        var config = DrbdConfig()
        var common = DrbdOptions()
        var resourceNodes: [DrbdNode] = []
        var firstResource: [String: DrbdToken] = [:]
        var firstSection: [String: DrbdToken] = [:]
        for node in document.nodes {
            if node.name == "global" || node.name == "common", node.isSection {
                if let first = firstSection[node.name] {
                    report(.drbdUnexpectedSection, at: node.keyword,
                           "a second '\(node.name)' section; the first is at \(first.location)",
                           hint: "merge the two sections into one")
                    continue
                }
                firstSection[node.name] = node.keyword
            }
            switch (node.name, node.isSection) {
            case ("global", true):
                config.globalOptions = options(of: node, section: "global")
            case ("common", true):
                common = commonOptions(node)
            case ("resource", true):
                guard let name = singleName(of: node, what: "resource") else { continue }
                if let first = firstResource[name.text] {
                    report(.drbdDuplicateResource, at: name, "resource '\(name.text)' is defined twice; first at \(first.location)")
                    continue
                }
                firstResource[name.text] = name
                resourceNodes.append(node)
            default:
                reportUnknownStatement(node, in: "the top level", known: ["global", "common", "resource", "include"])
            }
        }
        // Resources are built after `common` is known, wherever it appears in the file.
        for node in resourceNodes {
            if let resource = resource(node, common: common) { config.resources.append(resource) }
        }
        checkUniqueness(config)
        return config
    }

    // MARK: Reporting

    mutating func report(_ code: DiagnosticCode, at token: DrbdToken, _ message: String, hint: String? = nil) {
        log.report(document.diagnostic(.error, code, at: token, message, hint: hint))
    }

    mutating func report(_ code: DiagnosticCode, at location: SourceLocation, _ message: String) {
        log.report(document.diagnostic(.error, code, at: location, message))
    }

    mutating func warn(_ code: DiagnosticCode, at token: DrbdToken, _ message: String, hint: String? = nil) {
        log.report(document.diagnostic(.warning, code, at: token, message, hint: hint))
    }

    mutating func reportUnknownStatement(_ node: DrbdNode, in place: String, known: [String]) {
        let kind = node.isSection ? "section" : "keyword"
        report(
            .drbdUnknownOption, at: node.keyword, "unknown \(kind) '\(node.name)' in \(place)",
            hint: Suggestions.didYouMean(node.name, among: known)
        )
    }

    /// The single name argument of `resource NAME`, reporting its absence.
    mutating func singleName(of node: DrbdNode, what: String) -> DrbdToken? {
        guard node.arguments.count == 1, let name = node.arguments.first, name.isValue else {
            report(.drbdMissingName, at: node.arguments.dropFirst().first ?? node.keyword,
                   "expected exactly one name after '\(what)', such as '\(what) r0 {'")
            return nil
        }
        return name
    }

    // MARK: Option sections

    /// `common { protocol C; disk { } net { } ... }`.
    mutating func commonOptions(_ node: DrbdNode) -> DrbdOptions {
        var result = DrbdOptions()
        var seen: [DrbdOptionKey: DrbdToken] = [:]
        for child in node.body ?? [] {
            if child.isSection {
                applyOptions(of: child, section: child.name, into: &result, seen: &seen)
            } else if child.name == "protocol" {
                applyOption(child, section: "net", into: &result, seen: &seen)
            } else {
                reportUnknownStatement(child, in: "common", known: ["protocol"] + DrbdContext.optionSectionNames)
            }
        }
        return result
    }

    /// All options of one section node.
    mutating func options(of node: DrbdNode, section: String) -> DrbdOptions {
        var result = DrbdOptions()
        var seen: [DrbdOptionKey: DrbdToken] = [:]
        applyOptions(of: node, section: section, into: &result, seen: &seen)
        return result
    }

    mutating func applyOptions(
        of node: DrbdNode, section: String, into options: inout DrbdOptions, seen: inout [DrbdOptionKey: DrbdToken]
    ) {
        if !node.arguments.isEmpty {
            report(.drbdUnexpectedToken, at: node.arguments[0], "section '\(section)' takes no name; expected '{'")
        }
        for child in node.body ?? [] {
            applyOption(child, section: section, into: &options, seen: &seen)
        }
    }

    /// One `name value;` statement in section `section` (which may be DRBD 8.3's `syncer`).
    mutating func applyOption(
        _ node: DrbdNode, section: String, into options: inout DrbdOptions, seen: inout [DrbdOptionKey: DrbdToken]
    ) {
        guard !node.isSection else {
            report(.drbdUnexpectedSection, at: node.keyword, "'\(section)' holds options only, not sections")
            return
        }
        guard let resolved = DrbdLegacySpelling.resolve(node.name, writtenIn: section) else {
            reportUnknownOption(node, section: section)
            return
        }
        if resolved.isObsolete { return }
        guard let spec = DrbdOptionCatalog.spec(resolved.key.section, resolved.key.name) else {
            preconditionFailure("legacy spelling \(node.name) maps to \(resolved.key), which is not in the catalog")
        }
        let value: DrbdOptionValue?
        if let fixed = resolved.fixedValue {
            value = node.arguments.isEmpty ? fixed : nil
            if !node.arguments.isEmpty {
                report(.drbdBadValue, at: node.arguments[0], "'\(node.name)' takes no value")
            }
        } else {
            value = parseValue(node, spec: spec)
        }
        guard let value else { return }
        if let first = seen[resolved.key] {
            warn(.drbdDuplicateOption, at: node.keyword,
                 "'\(resolved.key.name)' is set again; this value replaces the one at line \(first.line)")
        }
        seen[resolved.key] = node.keyword
        options.set(resolved.key, Located(value, at: node.keyword.location))
    }

    mutating func reportUnknownOption(_ node: DrbdNode, section: String) {
        let candidates = DrbdLegacySpelling.spellings(in: section)
        var hint = Suggestions.didYouMean(node.name, among: candidates)
        if hint == nil, let home = DrbdOptionCatalog.all.first(where: { $0.name == node.name }) {
            hint = "'\(node.name)' belongs in the \(home.section.rawValue) section"
        }
        report(.drbdUnknownOption, at: node.keyword, "unknown option '\(node.name)' in section '\(section)'", hint: hint)
    }

    /// Checks the arguments of `node` against the option's kind and returns the value.
    mutating func parseValue(_ node: DrbdNode, spec: DrbdOptionSpec) -> DrbdOptionValue? {
        let arguments = node.arguments
        switch spec.kind {
        case .flag:
            if let extra = arguments.first {
                report(.drbdBadValue, at: extra, "'\(spec.name)' takes no value")
                return nil
            }
            return .flag
        case .boolean:
            guard let argument = arguments.first else { return .boolean(true) }
            guard arguments.count == 1, argument.kind == .word, ["yes", "no"].contains(argument.text) else {
                report(.drbdBadValue, at: argument, "expected 'yes' or 'no' for '\(spec.name)', got \(argument)")
                return nil
            }
            return .boolean(argument.text == "yes")
        case .numeric(let min, let max, _, let unit):
            guard let argument = oneArgument(node, expecting: "a number") else { return nil }
            return parseNumber(argument, option: spec.name, min: min, max: max, unit: unit).map { .number($0) }
        case .symbol(let choices, _):
            guard let argument = oneArgument(node, expecting: "one of \(choices.joined(separator: ", "))") else {
                return nil
            }
            guard choices.contains(argument.text) else {
                report(.drbdBadValue, at: argument,
                       "'\(argument.text)' is not a value of '\(spec.name)'; expected one of \(choices.joined(separator: ", "))",
                       hint: Suggestions.didYouMean(argument.text, among: choices))
                return nil
            }
            return .symbol(argument.text)
        case .numericOrSymbol(let min, let max, let symbols, _):
            guard let argument = oneArgument(node, expecting: "a number or one of \(symbols.joined(separator: ", "))") else {
                return nil
            }
            if symbols.contains(argument.text) { return .symbol(argument.text) }
            return parseNumber(argument, option: spec.name, min: min, max: max, unit: .plain("count")).map { .number($0) }
        case .string:
            guard let argument = oneArgument(node, expecting: "a word or a quoted string") else { return nil }
            return .string(argument.text)
        case .hostNames:
            guard !arguments.isEmpty, arguments.allSatisfy(\.isValue) else {
                report(.drbdBadValue, at: arguments.first ?? node.keyword, "expected one or more host names after '\(spec.name)'")
                return nil
            }
            return .hostNames(arguments.map(\.text))
        }
    }

    /// The single value argument of a statement, reporting a missing or extra one.
    mutating func oneArgument(_ node: DrbdNode, expecting: String) -> DrbdToken? {
        guard let first = node.arguments.first else {
            report(.drbdBadValue, at: node.keyword, "'\(node.name)' needs a value (\(expecting))")
            return nil
        }
        guard first.isValue else {
            report(.drbdBadValue, at: first, "expected \(expecting) after '\(node.name)', got \(first)")
            return nil
        }
        if node.arguments.count > 1 {
            report(.drbdBadValue, at: node.arguments[1], "'\(node.name)' takes one value; unexpected \(node.arguments[1])")
            return nil
        }
        return first
    }

    /// A number with an optional K/M/G/T (powers of 1024) or s (512-byte sectors) suffix, converted to the
    /// option's unit and range-checked there, as drbdadm does.
    mutating func parseNumber(_ token: DrbdToken, option: String, min: Int64, max: Int64, unit: DrbdNumericUnit) -> Int64? {
        guard let value = DrbdNumber.parse(token.text, unit: unit) else {
            report(.drbdBadValue, at: token,
                   "expected a number for '\(option)', optionally with a K, M, G or s suffix, got \(token)")
            return nil
        }
        guard value >= min, value <= max else {
            // Show the converted value only when it differs from what was written (a suffix was used).
            let converted = token.text == String(value) ? "" : " (\(value) \(unit.documentation))"
            report(.drbdValueOutOfRange, at: token,
                   "\(option) \(token.text)\(converted) is outside the allowed \(min)...\(max) \(unit.documentation)")
            return nil
        }
        return value
    }
}

/// Numbers as drbd.conf writes them.
enum DrbdNumber {
    /// `token` in units of `unit`, or nil if it is not a number or overflows. A bare number is already in the unit;
    /// a suffixed one is converted from bytes (rounded down, as drbdadm does).
    static func parse(_ text: String, unit: DrbdNumericUnit) -> Int64? {
        var digits = Substring(text)
        var multiplierBytes: Int64?
        if let last = digits.last, !last.isNumber {
            switch last {
            case "k", "K": multiplierBytes = 1 << 10
            case "m", "M": multiplierBytes = 1 << 20
            case "g", "G": multiplierBytes = 1 << 30
            case "t", "T": multiplierBytes = 1 << 40
            case "s": multiplierBytes = 512
            default: return nil
            }
            digits = digits.dropLast()
        }
        let isNegative = digits.hasPrefix("-")
        if isNegative { digits = digits.dropFirst() }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let magnitude = Int64(digits) else {
            return nil
        }
        let signed = isNegative ? -magnitude : magnitude
        guard let multiplierBytes else { return signed }
        let (bytes, overflow) = signed.multipliedReportingOverflow(by: multiplierBytes)
        guard !overflow else { return nil }
        return bytes / unit.bytesPerUnit
    }
}
