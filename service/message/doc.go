// Package message is the messages-and-files service of agentnet (virtual
// port 1001): a peer sends a typed message (text, JSON, binary) or a file,
// the receiver stores it in its inbox, verifies its SHA-256 and acknowledges
// it.
//
// # Wire format
//
// One item per stream. Frames are a 2-byte big-endian length followed by the
// frame body. The sender writes a header frame, the body (exactly Size
// bytes), the body's SHA-256 (32 bytes), and half-closes:
//
//	header: +---------+------+----------------+----------+------------+
//	        | version | kind | size (8, BE)   | name len | name       |
//	        |  0x01   |  1   |                |    1     | 0-255      |
//	        +---------+------+----------------+----------+------------+
//
//	kind: 1 text (UTF-8), 2 JSON, 3 binary, 4 file (name = file name)
//
// The receiver answers one ack frame and closes the stream:
//
//	ack:    +---------+--------+-------------+--------+-----+-----------+------+
//	        | version | status | sha256 (32) | id len | id  | text len  | text |
//	        |  0x01   |   1    |             |   1    |     |  2, BE    |      |
//	        +---------+--------+-------------+--------+-----+-----------+------+
//
//	status: 0 ok, 1 too large, 2 bad request, 3 checksum mismatch,
//	        4 inbox full, 5 internal error
//
// A receiver refuses an item over its limits as soon as it has read the
// header: it answers the ack and stops reading, so the sender's writes fail
// and it reads the ack to learn why. Parsers ignore trailing bytes in a frame
// (forward compatibility) and check every length.
//
// # Inbox
//
// The Inbox keeps items in a directory: files/ holds received files under
// their sanitised names (SanitizeName: "../../x" becomes "x", so nothing
// escapes the inbox; a taken name gets " (1)", " (2)" ...), messages/ the
// message bodies, index/ one JSON document per item, and .tmp/ transfers in
// progress (removed on open). A quota bounds the inbox's total size.
package message
