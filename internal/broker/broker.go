// Package broker runs an embedded NATS server with JetStream, for
// `perfpipe up` and for tests. It is the real nats-server, in-process.
//
// Start it with Start, hand ClientURL to the services, and Shutdown when
// they have drained.
package broker

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config configures the embedded server.
type Config struct {
	// Host to listen on. Empty means 127.0.0.1: the embedded server is for
	// one machine.
	Host string
	// Port to listen on. Zero means 4222; -1 picks a free port.
	Port int
	// StoreDir is the JetStream store folder. Required: data kept there
	// survives a restart.
	StoreDir string
	// MaxMemory and MaxStore limit JetStream in bytes; zero means the
	// server's defaults (a share of the machine).
	MaxMemory int64
	MaxStore  int64
	// ReadyTimeout bounds the wait for the server to accept clients.
	// Zero means 10 s.
	ReadyTimeout time.Duration
}

// Server is a running embedded NATS server.
type Server struct {
	srv *server.Server
}

// Start runs a NATS server with JetStream and waits until it accepts
// clients.
func Start(cfg Config) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("broker: StoreDir is required")
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = 4222
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}

	opts := &server.Options{
		ServerName:         "perfpipe",
		Host:               cfg.Host,
		Port:               cfg.Port,
		JetStream:          true,
		StoreDir:           cfg.StoreDir,
		JetStreamMaxMemory: cfg.MaxMemory,
		JetStreamMaxStore:  cfg.MaxStore,
		NoSigs:             true,
		NoLog:              true,
		MaxPayload:         8 << 20,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("broker: new server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(cfg.ReadyTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("broker: not ready after %s on %s:%d",
			cfg.ReadyTimeout, cfg.Host, cfg.Port)
	}
	return &Server{srv: srv}, nil
}

// ClientURL is the URL clients dial.
func (s *Server) ClientURL() string { return s.srv.ClientURL() }

// Shutdown stops the server and waits for it to finish.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}
