// Package event is the publish/subscribe service of agentnet (virtual port
// 1002). Every node has a Bus: events published on it reach its local
// subscribers and the trusted peers subscribed to it; a peer may also publish
// onto another node's bus, for that node's local subscribers.
//
// # Topics and patterns
//
// A topic is 1-255 bytes of dot-separated segments, each made of printable
// ASCII other than '.', '*' and '>' ("builds.linux.done"). A pattern is a
// topic whose segments may be '*' (exactly one segment) or, as the last
// segment, '>' (one or more segments): "builds.*.done", "builds.>", ">".
//
// # Queues
//
// Each subscription has a bounded queue (DefaultQueue events). When it is
// full, new events for that subscriber are dropped and counted; every event
// delivered carries the subscription's drop count so far, so a subscriber
// knows it missed something. Publishing never blocks.
//
// # Wire format
//
// Frames: a 4-byte big-endian length (type and body, at most MaxFrame),
// then a type byte and the body. Integers are big endian; strings are a
// length and bytes. Parsers ignore trailing bytes (forward compatibility).
//
//	1 subscribe  count (1) | count × (len (1) | pattern)
//	2 publish    topic len (1) | topic | data len (4) | data
//	3 event      seq (8) | time (8, unix ns) | dropped (8) | from (8, address)
//	             | topic len (1) | topic | data len (4) | data
//	4 ack        status (1) | delivered (4) | text len (2) | text
//
// A subscriber opens a stream and sends subscribe; the bus answers an ack
// (status 0 ok, 1 bad request, 2 refused) and then event frames until either
// side closes. A publisher sends publish frames on a stream and gets an ack
// for each, with the number of subscribers the event was queued for.
package event
