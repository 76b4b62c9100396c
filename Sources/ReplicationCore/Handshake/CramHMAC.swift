/// DRBD's cram-hmac challenge-response (reference drbd.md section 3): each side sends a random 64-byte challenge,
/// answers the peer's challenge with HMAC(secret, challenge), and checks the peer's answer to its own. A peer that
/// sends back our own challenge is refused: that is a reflection attack, where the attacker would get us to compute
/// the answer it needs.
public struct CramHMAC: Sendable {
    public static let challengeBytes = 64

    public let authentication: PeerAuthentication
    public let ownChallenge: [UInt8]

    public init(authentication: PeerAuthentication, ownChallenge: [UInt8]) {
        precondition(ownChallenge.count == Self.challengeBytes, "challenge has \(ownChallenge.count) bytes")
        self.authentication = authentication
        self.ownChallenge = ownChallenge
    }

    public enum Failure: String, Error, Sendable {
        case reflectedChallenge = "the peer sent back our own challenge (reflection attack refused)"
        case wrongChallengeLength = "the peer's challenge has the wrong length"
        case wrongResponse = "the peer's response does not match: the shared secrets differ"
        case unusableAlgorithm = "the cram-hmac algorithm cannot compute an HMAC"
    }

    /// Our answer to the peer's challenge.
    public func response(toPeerChallenge challenge: [UInt8]) -> Result<[UInt8], Failure> {
        guard challenge.count == Self.challengeBytes else { return .failure(.wrongChallengeLength) }
        guard challenge != ownChallenge else { return .failure(.reflectedChallenge) }
        guard let answer = authentication.algorithm.hmac(key: authentication.secret, message: challenge) else {
            return .failure(.unusableAlgorithm)
        }
        return .success(answer)
    }

    /// Checks the peer's answer to our challenge, in constant time.
    public func verify(peerResponse: [UInt8]) -> Result<Void, Failure> {
        guard let expected = authentication.algorithm.hmac(key: authentication.secret, message: ownChallenge) else {
            return .failure(.unusableAlgorithm)
        }
        guard expected.count == peerResponse.count else { return .failure(.wrongResponse) }
        var difference: UInt8 = 0
        for (left, right) in zip(expected, peerResponse) { difference |= left ^ right }
        return difference == 0 ? .success(()) : .failure(.wrongResponse)
    }
}
