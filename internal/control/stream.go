package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The data of backup and export follows the reply line in chunks: a line
// with the chunk's length in hex, then that many bytes. A chunk of length 0
// ends the data and is followed by a trailer reply line, which says whether
// all of it was sent. A stream that ends without the trailer was cut short:
// the server's error came after the data had started.

// maxChunk bounds a chunk's length.
const maxChunk = 1 << 20

// errCutShort means the data ended without its trailer.
var errCutShort = errors.New("the data ended before the server said it was complete (see the server's log)")

// chunkWriter writes each Write as one chunk.
type chunkWriter struct{ w io.Writer }

func (c chunkWriter) Write(p []byte) (int, error) {
	for done := 0; done < len(p); {
		n := min(len(p)-done, maxChunk)
		if _, err := fmt.Fprintf(c.w, "%x\n", n); err != nil {
			return done, err
		}
		if _, err := c.w.Write(p[done : done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return len(p), nil
}

// endStream writes the last chunk and the trailer.
func endStream(w io.Writer, trailer reply) error {
	if _, err := io.WriteString(w, "0\n"); err != nil {
		return err
	}
	b, _ := json.Marshal(trailer)
	_, err := w.Write(append(b, '\n'))
	return err
}

// readStream copies the chunks from br into sink and returns the trailer.
func readStream(br *bufio.Reader, sink io.Writer) (reply, error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return reply{}, errCutShort
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(line, "\n"), 16, 64)
		if err != nil || n < 0 || n > maxChunk {
			return reply{}, fmt.Errorf("bad chunk header %q", truncate(line, 20))
		}
		if n == 0 {
			line, err := br.ReadBytes('\n')
			if err != nil {
				return reply{}, errCutShort
			}
			var t reply
			if err := json.Unmarshal(line, &t); err != nil {
				return reply{}, fmt.Errorf("bad trailer: %w", err)
			}
			return t, nil
		}
		if _, err := io.CopyN(sink, br, n); err != nil {
			if errors.Is(err, io.EOF) {
				return reply{}, errCutShort
			}
			return reply{}, err
		}
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
