package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// DefaultTimeout bounds a publish or a stream operation when the caller's
// context has no deadline.
const DefaultTimeout = 10 * time.Second

// Conn is a NATS connection with its JetStream context.
type Conn struct {
	NC  *nats.Conn
	JS  jetstream.JetStream
	log *slog.Logger
}

// Connect dials url as client name and keeps reconnecting for as long as
// the connection is open. It fails if the first dial fails.
func Connect(ctx context.Context, url, name string, log *slog.Logger) (*Conn, error) {
	if log == nil {
		log = slog.Default()
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected, reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", "url", c.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Warn("nats async error", "subject", subj, "err", err)
		}),
	}
	if dl, ok := ctx.Deadline(); ok {
		opts = append(opts, nats.Timeout(time.Until(dl)))
	}

	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", redact(url), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Conn{NC: nc, JS: js, log: log}, nil
}

// Close drains the connection: pending publishes are flushed and
// subscriptions finish their current message.
func (c *Conn) Close() {
	if err := c.NC.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		c.NC.Close()
	}
	for !c.NC.IsClosed() {
		time.Sleep(5 * time.Millisecond)
	}
}

// Publish encodes ev with msgpack and publishes it to subject through
// JetStream, waiting for the stream's ack. A non-empty msgID is set as
// Nats-Msg-Id so that the stream drops duplicates.
func (c *Conn) Publish(ctx context.Context, subject string, ev events.Event, msgID string) error {
	_, err := c.PublishAck(ctx, subject, ev, msgID)
	return err
}

// PublishAck is Publish returning the stream's ack, whose Duplicate field
// says the stream already held msgID and dropped this copy.
func (c *Conn) PublishAck(ctx context.Context, subject string, ev events.Event,
	msgID string) (*jetstream.PubAck, error) {
	msg, err := Message(subject, ev, msgID)
	if err != nil {
		return nil, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	ack, err := c.JS.PublishMsg(ctx, msg)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	return ack, nil
}

// Message builds the NATS message for ev with perfpipe's headers.
func Message(subject string, ev events.Event, msgID string) (*nats.Msg, error) {
	data, err := events.Marshal(ev)
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(events.HeaderType, string(ev.EventType()))
	msg.Header.Set(events.HeaderSchema, strconv.Itoa(events.SchemaVersion))
	msg.Header.Set(events.HeaderContentType, events.ContentMsgpack)
	if msgID != "" {
		msg.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	return msg, nil
}

// DeadLetter publishes dl on the dead-letter subject of its kind. The time
// is set when the caller left it zero.
func (c *Conn) DeadLetter(ctx context.Context, dl *events.DeadLetter) error {
	if dl.Time.IsZero() {
		dl.Time = time.Now()
	}
	if dl.Kind == "" {
		dl.Kind = "unknown"
	}
	// A dead letter must fit in one message, or it would fail for ever:
	// past the server's limit it keeps everything but the original bytes.
	if limit := c.NC.MaxPayload() - 4096; int64(len(dl.Data)) > limit {
		dl.Error = fmt.Sprintf("%s (original message of %d bytes not kept: over the %d-byte limit)",
			dl.Error, len(dl.Data), limit)
		dl.Data = nil
	}
	if err := c.Publish(ctx, events.DeadSubject(dl.Kind), dl, ""); err != nil {
		return err
	}
	c.log.Warn("dead-lettered message", "service", dl.Service, "subject", dl.Subject,
		"id", dl.ID, "reason", dl.Reason)
	return nil
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}
