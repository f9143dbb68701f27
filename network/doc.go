// Package network defines the signed documents that make agentnet networks
// (REQ-2): an Invite from a network's owner, the Join that accepts it, and
// the Exit that ends a membership (a Leave by the member, a Remove by the
// owner). It is a leaf package: the standard library and addressing only.
//
// # Trust model
//
// A network has a 16-bit ID (allocated by the rendezvous, never 0), a name
// (hostname rules, unique at the rendezvous) and an owner key. A node learns
// the owner key out of band: it created the network, or it accepted an
// invite the owner signed. From then on it accepts a member only on a Join
// whose invite verifies under that owner key, so a rendezvous that is
// compromised can withhold documents but cannot add a member.
//
// An invite is either targeted or bearer. A targeted invite names the
// invitee's identity key; only that key can join with it. A bearer invite
// names a fresh capability key instead, and its token carries that key's
// private half: whoever holds the token proves it by a claim signature over
// its own key inside the Join. The rendezvous sees the Join, never the
// capability key's private half, so it cannot mint Joins for keys of its
// own even from bearer invites. A bearer invite is good for any number of
// joins until it expires.
//
// # Rules
//
// Info.CheckJoin and Info.CheckExit hold the membership rules that both the
// rendezvous and every node apply:
//
//   - The owner is always a member and never joins, leaves or is removed.
//   - A Join is valid if the invite verifies under the owner key and names
//     this network (ID, name, owner), the claim (bearer) and the member's
//     signature verify, the invitee is the member (targeted), and
//     Issued - MaxClockSkew <= Time <= Expires.
//   - A membership ends with an Exit later than its Join; a later Join
//     starts it again. Documents not newer than the member's current Join
//     or last Exit are stale (ErrStale): replays change nothing.
//   - After a Remove, a Join needs an invite issued after the Remove
//     (ErrRemoved): a removed member cannot come back on an old invite.
//
// The rendezvous also refuses documents whose Time is more than
// MaxClockSkew from its clock (CheckTime), so members cannot backdate.
//
// # Encoding
//
// Every document is signed with Ed25519 over "agentnet network v1\x00"
// followed by every byte before the signature. All integers are big endian;
// times are int64 Unix nanoseconds.
//
//	Invite  01 | 01 kind | network (2) | name len (1) | name (1-63) |
//	        owner (32) | flags (1, bit 0: bearer) | invitee (32) |
//	        issued (8) | expires (8) | nonce (16) | sig (64)         owner signs
//	Join    01 | 02 | invite len (2) | invite | member (32) | time (8) |
//	        [claim (64), bearer invites only] | sig (64)          member signs
//	Leave   01 | 03 | network (2) | owner (32) | member (32) | time (8) |
//	        sig (64)                                              member signs
//	Remove  01 | 04 | same as Leave                                owner signs
//
// The claim is the capability key's signature over
// "agentnet network claim v1\x00" | invite nonce | member key.
//
// Parsing is strict and refuses trailing bytes: the signature covers exact
// bytes and every document has exactly one encoding, so re-encoding a parsed
// document reproduces its input. A document is at most MaxDocSize bytes.
//
// An invite token, the text a person passes on, is "anet-invite:" followed
// by the base64url (unpadded) encoding of the invite, and for a bearer
// invite then the 32-byte seed of the capability key.
package network
