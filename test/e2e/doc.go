// Package e2e runs the whole pipeline as separate processes of the built
// perfpipe binary against an embedded NATS server and a real redis-server,
// and checks what users see: results, the cache, snapshots, delays,
// priorities and dead letters.
package e2e
