package basebackup

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Recorded replies are stored as the bytes the server sent: backend
// messages in wire format (a type byte, a big-endian int32 length that
// counts itself, the body).

// newBackendMessage returns an empty message of the given wire type, for
// the types a replication connection can send.
func newBackendMessage(typ byte) pgproto3.BackendMessage {
	switch typ {
	case 'T':
		return &pgproto3.RowDescription{}
	case 'D':
		return &pgproto3.DataRow{}
	case 'C':
		return &pgproto3.CommandComplete{}
	case 'H':
		return &pgproto3.CopyOutResponse{}
	case 'G':
		return &pgproto3.CopyInResponse{}
	case 'W':
		return &pgproto3.CopyBothResponse{}
	case 'd':
		return &pgproto3.CopyData{}
	case 'c':
		return &pgproto3.CopyDone{}
	case 'Z':
		return &pgproto3.ReadyForQuery{}
	case 'E':
		return &pgproto3.ErrorResponse{}
	case 'N':
		return &pgproto3.NoticeResponse{}
	case 'S':
		return &pgproto3.ParameterStatus{}
	case 'A':
		return &pgproto3.NotificationResponse{}
	case 'I':
		return &pgproto3.EmptyQueryResponse{}
	}
	return nil
}

// wireSource is a MessageSource over recorded wire bytes. A malformed
// message becomes an error of the source, as a broken connection would.
func wireSource(b []byte) MessageSource {
	return func() (pgproto3.BackendMessage, error) {
		if len(b) == 0 {
			return nil, io.ErrUnexpectedEOF
		}
		if len(b) < 5 {
			return nil, fmt.Errorf("truncated message header")
		}
		typ, n := b[0], int64(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || n-4 > int64(len(b)-5) {
			return nil, fmt.Errorf("message %q of length %d with %d bytes left", typ, n, len(b)-5)
		}
		body := b[5 : 5+n-4]
		b = b[5+n-4:]
		m := newBackendMessage(typ)
		if m == nil {
			return nil, fmt.Errorf("unknown message type %q", typ)
		}
		if err := m.Decode(body); err != nil {
			return nil, err
		}
		return m, nil
	}
}

// readWire decodes all messages of recorded wire bytes.
func readWire(b []byte) ([]pgproto3.BackendMessage, error) {
	next := wireSource(b)
	var msgs []pgproto3.BackendMessage
	for {
		m, err := next()
		if err == io.ErrUnexpectedEOF {
			return msgs, nil
		}
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
}

// encodeWire encodes messages in wire format.
func encodeWire(msgs ...pgproto3.BackendMessage) []byte {
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			panic(err)
		}
	}
	return b
}

// sliceSource is a MessageSource over messages built in a test; after the
// last one it fails like a closed connection.
func sliceSource(msgs []pgproto3.BackendMessage) MessageSource {
	return func() (pgproto3.BackendMessage, error) {
		if len(msgs) == 0 {
			return nil, io.ErrUnexpectedEOF
		}
		m := msgs[0]
		msgs = msgs[1:]
		return m, nil
	}
}
