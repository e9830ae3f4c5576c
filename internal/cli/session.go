package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

func init() {
	register("session", "move, export or import server-side sessions (snapshots)", runSession)
}

const sessionUsage = `usage: switchyard session move|export|import [flags]

  move    --from ADDR --to ADDR --id ID [--keep]
          copies a session from one trunk node to another (ExportSession then
          ImportSession) and deletes the original unless --keep; prints the new id
  export  --addr ADDR --id ID --out FILE
          writes a session snapshot to FILE
  import  --addr ADDR --in FILE
          creates a session from a snapshot file; prints its id

A snapshot is only accepted by a node serving a model of the same shape.`

func runSession(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, sessionUsage)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	sub := args[0]
	fs := newFlags("session "+sub, stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, sessionUsage)
		fmt.Fprintln(stderr, "\nflags:")
		fs.PrintDefaults()
	}
	addr := fs.String("addr", "", "trunk node public API address (export, import)")
	from := fs.String("from", "", "source trunk node address (move)")
	to := fs.String("to", "", "destination trunk node address (move)")
	id := fs.String("id", "", "session id (move, export)")
	out := fs.String("out", "", "snapshot file to write (export)")
	in := fs.String("in", "", "snapshot file to read (import)")
	keep := fs.Bool("keep", false, "move: keep the original session")
	token := fs.String("api-token", os.Getenv("SWITCHYARD_API_TOKEN"), "bearer token for the public API (default $SWITCHYARD_API_TOKEN)")
	tlsCA := fs.String("tls-ca", "", "CA bundle to verify the public API's TLS certificate (enables TLS)")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	client := func(a, flagName string) (pb.SwitchyardClient, func(), error) {
		if a == "" {
			return nil, nil, fmt.Errorf("--%s is required", flagName)
		}
		conn, err := dialPublic(a, *token, *tlsCA)
		if err != nil {
			return nil, nil, err
		}
		return pb.NewSwitchyardClient(conn), func() { conn.Close() }, nil
	}
	switch sub {
	case "move":
		if *id == "" {
			return errors.New("--id is required")
		}
		src, closeSrc, err := client(*from, "from")
		if err != nil {
			return err
		}
		defer closeSrc()
		dst, closeDst, err := client(*to, "to")
		if err != nil {
			return err
		}
		defer closeDst()
		s, tokens, err := moveSession(ctx, src, dst, *id)
		if err != nil {
			return err
		}
		if !*keep {
			// A turn that ran on the source after the export would be lost: check
			// that it still holds what was copied before deleting it.
			now, err := src.GetSession(ctx, &pb.GetSessionRequest{SessionId: *id})
			if err != nil {
				return fmt.Errorf("copied to %s as %s, but could not re-check the original (kept): %w", *to, s.SessionId, err)
			}
			if now.Tokens != tokens {
				return fmt.Errorf("copied to %s as %s, but the original changed meanwhile (%d -> %d tokens); both are kept", *to, s.SessionId, tokens, now.Tokens)
			}
			if _, err := src.DeleteSession(ctx, &pb.DeleteSessionRequest{SessionId: *id}); err != nil {
				return fmt.Errorf("moved to %s as %s, but deleting the original failed: %w", *to, s.SessionId, err)
			}
		}
		fmt.Fprintf(stdout, "%s\t%d tokens\t%d bytes\ton %s\n", s.SessionId, s.Tokens, s.StateBytes, s.Node)
	case "export":
		if *id == "" || *out == "" {
			return errors.New("--id and --out are required")
		}
		c, done, err := client(*addr, "addr")
		if err != nil {
			return err
		}
		defer done()
		return writeFileAtomic(*out, func(w io.Writer) error {
			var got, want int64
			err := exportSession(ctx, c, *id, func(m *pb.SessionSnapshotChunk) error {
				if want == 0 {
					want = m.TotalBytes
				}
				got += int64(len(m.Data))
				_, err := w.Write(m.Data)
				return err
			})
			if err == nil && got != want {
				err = fmt.Errorf("export %s: received %d of %d bytes", *id, got, want)
			}
			return err
		})
	case "import":
		if *in == "" {
			return errors.New("--in is required")
		}
		c, done, err := client(*addr, "addr")
		if err != nil {
			return err
		}
		defer done()
		f, err := os.Open(*in)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() || fi.Size() == 0 {
			return fmt.Errorf("--in %s: want a non-empty snapshot file written by 'session export'", *in)
		}
		s, err := importSession(ctx, c, fi.Size(), func(buf []byte) (int, error) { return io.ReadFull(f, buf) })
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\t%d tokens\t%d bytes\ton %s\n", s.SessionId, s.Tokens, s.StateBytes, s.Node)
	default:
		fmt.Fprintf(stderr, "switchyard session: unknown subcommand %q\n\n%s\n", sub, sessionUsage)
		return errUsage
	}
	return nil
}

// exportSession streams a session's snapshot chunks to fn.
func exportSession(ctx context.Context, c pb.SwitchyardClient, id string, fn func(*pb.SessionSnapshotChunk) error) error {
	st, err := c.ExportSession(ctx, &pb.ExportSessionRequest{SessionId: id})
	if err != nil {
		return err
	}
	for {
		m, err := st.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("export %s: %w", id, err)
		}
		if err := fn(m); err != nil {
			return err
		}
	}
}

// importSession streams a snapshot of total bytes, read by read in chunks, into
// ImportSession.
func importSession(ctx context.Context, c pb.SwitchyardClient, total int64, read func([]byte) (int, error)) (*pb.Session, error) {
	ctx, cancel := context.WithCancel(ctx) // ends the call on a local read error
	defer cancel()
	st, err := c.ImportSession(ctx)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 1<<20)
	for sent := int64(0); sent < total; {
		n, err := read(buf[:min(int64(len(buf)), total-sent)])
		if err != nil {
			return nil, fmt.Errorf("read snapshot: %w", err)
		}
		m := &pb.SessionSnapshotChunk{Data: buf[:n]}
		if sent == 0 {
			m.TotalBytes = total
		}
		if err := st.Send(m); err != nil {
			break // the server refused; CloseAndRecv returns why
		}
		sent += int64(n)
	}
	return st.CloseAndRecv()
}

// moveSession copies a session from src to dst chunk by chunk (nothing is held
// whole in this process) and returns the copy and the tokens the export held.
func moveSession(ctx context.Context, src, dst pb.SwitchyardClient, id string) (*pb.Session, int32, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in, err := dst.ImportSession(ctx)
	if err != nil {
		return nil, 0, err
	}
	tokens := int32(-1)
	err = exportSession(ctx, src, id, func(m *pb.SessionSnapshotChunk) error {
		if tokens < 0 {
			tokens = m.Tokens
		}
		if err := in.Send(m); err != nil {
			return io.EOF // the destination refused; CloseAndRecv says why
		}
		return nil
	})
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, err
	}
	s, rerr := in.CloseAndRecv()
	if rerr != nil {
		return nil, 0, fmt.Errorf("import into the destination: %w", rerr)
	}
	return s, tokens, nil
}

// writeFileAtomic writes path through a temporary file in the same folder that
// is renamed over it only when body succeeded.
func writeFileAtomic(path string, body func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op after the rename
	w := bufio.NewWriterSize(f, 1<<20)
	if err := body(w); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
