import TandemConfig

// The u8 codes that enums travel as. They are written out case by case (never derived from declaration order or
// from the configuration spellings) so that reordering or renaming a case cannot change the wire format. Code 0 is
// never used, so that a zeroed field is refused. docs/wire-formats.md lists the same tables.

extension Role {
    var wireCode: UInt8 {
        switch self {
        case .primary: 1
        case .secondary: 2
        case .unknown: 3
        }
    }

    init?(wireCode: UInt8) {
        switch wireCode {
        case 1: self = .primary
        case 2: self = .secondary
        case 3: self = .unknown
        default: return nil
        }
    }
}

extension DiskState {
    var wireCode: UInt8 {
        switch self {
        case .diskless: 1
        case .attaching: 2
        case .detaching: 3
        case .failed: 4
        case .negotiating: 5
        case .inconsistent: 6
        case .outdated: 7
        case .unknown: 8
        case .consistent: 9
        case .upToDate: 10
        }
    }

    init?(wireCode: UInt8) {
        switch wireCode {
        case 1: self = .diskless
        case 2: self = .attaching
        case 3: self = .detaching
        case 4: self = .failed
        case 5: self = .negotiating
        case 6: self = .inconsistent
        case 7: self = .outdated
        case 8: self = .unknown
        case 9: self = .consistent
        case 10: self = .upToDate
        default: return nil
        }
    }
}

extension ReplicationProtocol {
    var wireCode: UInt8 {
        switch self {
        case .a: 1
        case .b: 2
        case .c: 3
        }
    }

    init?(wireCode: UInt8) {
        switch wireCode {
        case 1: self = .a
        case 2: self = .b
        case 3: self = .c
        default: return nil
        }
    }
}

/// One code space shared by the three after-split-brain policy fields, as in DRBD (which numbers all its `ASB_*`
/// values together). Each field accepts only the policies its drbd.conf option accepts.
enum AfterSplitBrainWireCode {
    static let disconnect: UInt8 = 1
    static let discardYoungerPrimary: UInt8 = 2
    static let discardOlderPrimary: UInt8 = 3
    static let discardZeroChanges: UInt8 = 4
    static let discardLeastChanges: UInt8 = 5
    static let discardLocal: UInt8 = 6
    static let discardRemote: UInt8 = 7
    static let consensus: UInt8 = 8
    static let discardSecondary: UInt8 = 9
    static let callPriLostAfterSB: UInt8 = 10
    static let violentlyAs0p: UInt8 = 11

    /// The drbd.conf spelling of a code, for messages; nil for a code outside the table.
    static func name(_ code: UInt8) -> String? {
        switch code {
        case disconnect: "disconnect"
        case discardYoungerPrimary: "discard-younger-primary"
        case discardOlderPrimary: "discard-older-primary"
        case discardZeroChanges: "discard-zero-changes"
        case discardLeastChanges: "discard-least-changes"
        case discardLocal: "discard-local"
        case discardRemote: "discard-remote"
        case consensus: "consensus"
        case discardSecondary: "discard-secondary"
        case callPriLostAfterSB: "call-pri-lost-after-sb"
        case violentlyAs0p: "violently-as0p"
        default: nil
        }
    }
}

extension AfterSplitBrainZeroPrimaries {
    var wireCode: UInt8 {
        switch self {
        case .disconnect: AfterSplitBrainWireCode.disconnect
        case .discardYoungerPrimary: AfterSplitBrainWireCode.discardYoungerPrimary
        case .discardOlderPrimary: AfterSplitBrainWireCode.discardOlderPrimary
        case .discardZeroChanges: AfterSplitBrainWireCode.discardZeroChanges
        case .discardLeastChanges: AfterSplitBrainWireCode.discardLeastChanges
        case .discardLocal: AfterSplitBrainWireCode.discardLocal
        case .discardRemote: AfterSplitBrainWireCode.discardRemote
        }
    }

    init?(wireCode: UInt8) {
        switch wireCode {
        case AfterSplitBrainWireCode.disconnect: self = .disconnect
        case AfterSplitBrainWireCode.discardYoungerPrimary: self = .discardYoungerPrimary
        case AfterSplitBrainWireCode.discardOlderPrimary: self = .discardOlderPrimary
        case AfterSplitBrainWireCode.discardZeroChanges: self = .discardZeroChanges
        case AfterSplitBrainWireCode.discardLeastChanges: self = .discardLeastChanges
        case AfterSplitBrainWireCode.discardLocal: self = .discardLocal
        case AfterSplitBrainWireCode.discardRemote: self = .discardRemote
        default: return nil
        }
    }
}

extension AfterSplitBrainOnePrimary {
    var wireCode: UInt8 {
        switch self {
        case .disconnect: AfterSplitBrainWireCode.disconnect
        case .consensus: AfterSplitBrainWireCode.consensus
        case .discardSecondary: AfterSplitBrainWireCode.discardSecondary
        case .callPriLostAfterSB: AfterSplitBrainWireCode.callPriLostAfterSB
        case .violentlyAs0p: AfterSplitBrainWireCode.violentlyAs0p
        }
    }

    init?(wireCode: UInt8) {
        switch wireCode {
        case AfterSplitBrainWireCode.disconnect: self = .disconnect
        case AfterSplitBrainWireCode.consensus: self = .consensus
        case AfterSplitBrainWireCode.discardSecondary: self = .discardSecondary
        case AfterSplitBrainWireCode.callPriLostAfterSB: self = .callPriLostAfterSB
        case AfterSplitBrainWireCode.violentlyAs0p: self = .violentlyAs0p
        default: return nil
        }
    }
}

extension AfterSplitBrainTwoPrimaries {
    var wireCode: UInt8 {
        switch self {
        case .disconnect: AfterSplitBrainWireCode.disconnect
        case .callPriLostAfterSB: AfterSplitBrainWireCode.callPriLostAfterSB
        case .violentlyAs0p: AfterSplitBrainWireCode.violentlyAs0p
        }
    }

    init?(wireCode: UInt8) {
        switch wireCode {
        case AfterSplitBrainWireCode.disconnect: self = .disconnect
        case AfterSplitBrainWireCode.callPriLostAfterSB: self = .callPriLostAfterSB
        case AfterSplitBrainWireCode.violentlyAs0p: self = .violentlyAs0p
        default: return nil
        }
    }
}
