// Package events is perfpipe's wire contract: the events that services and
// users exchange over NATS, the subjects and streams they travel on, and the
// encoding rules.
//
// Every event is a Go struct with msgpack tags that embeds [Meta], which
// carries the event type and the schema version. [Marshal] stamps both and
// encodes with msgpack; [Unmarshal] accepts msgpack or, for events typed by a
// person on a shell, JSON, and rejects a wrong type or a newer schema with
// [ErrWrongType] or [ErrSchema].
//
// Subject and stream names are defined here once; services and users build
// subjects with the functions in subjects.go, never by hand.
package events
