package announce

// Reason is what a handler did with a received frame: answered it or why not.
// Tests assert it and [Stats] counts it.
type Reason uint8

// The reasons. Every reason but ReasonAnswered is a drop.
const (
	// ReasonAnswered: a request for an active VIP; the reply is to be sent.
	ReasonAnswered Reason = iota
	// ReasonNotOurs: a request for an address that is not an active VIP on
	// this interface, or a frame sent to another host's MAC.
	ReasonNotOurs
	// ReasonReplyIgnored: an ARP reply or a neighbour advertisement.
	ReasonReplyIgnored
	// ReasonMalformed: a frame that cannot be parsed, or that breaks the
	// validity rules of RFC 826 / RFC 4861 section 7.1.1 (hop limit, checksum,
	// code, lengths, addresses).
	ReasonMalformed
	// ReasonRateLimited: a request for an active VIP beyond the interface's
	// reply budget (Options.ReplyRate, Options.ReplyBurst).
	ReasonRateLimited
	// ReasonNotARequest: a valid ARP or ICMPv6 packet that asks nothing, such
	// as another ARP operation, another ICMPv6 type, or a gratuitous ARP
	// announcement of another host.
	ReasonNotARequest

	numReasons
)

var reasonNames = [numReasons]string{
	ReasonAnswered:     "answered",
	ReasonNotOurs:      "not ours",
	ReasonReplyIgnored: "reply ignored",
	ReasonMalformed:    "malformed",
	ReasonRateLimited:  "rate limited",
	ReasonNotARequest:  "not a request",
}

var reasonLabels = [numReasons]string{
	ReasonAnswered:     "answered",
	ReasonNotOurs:      "not_ours",
	ReasonReplyIgnored: "reply_ignored",
	ReasonMalformed:    "malformed",
	ReasonRateLimited:  "rate_limited",
	ReasonNotARequest:  "not_a_request",
}

// String returns the reason in words, such as "not ours".
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Label returns the reason as a metric label value, such as "not_ours".
func (r Reason) Label() string {
	if r < numReasons {
		return reasonLabels[r]
	}
	return "unknown"
}

// DropReasons lists every reason that is a drop, in a fixed order: the keys
// of [ProtocolStats].Drops.
var DropReasons = []Reason{ReasonNotOurs, ReasonReplyIgnored, ReasonMalformed, ReasonRateLimited, ReasonNotARequest}
