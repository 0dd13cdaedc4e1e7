package splice

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// echoBackend serves c as a gobwas/ws echo server until the connection ends.
func echoBackend(c net.Conn) <-chan error {
	errc := make(chan error, 1)
	go func() {
		for {
			msg, op, err := wsutil.ReadClientData(c)
			if err != nil {
				errc <- err
				return
			}
			if err := wsutil.WriteServerMessage(c, op, msg); err != nil {
				errc <- err
				return
			}
		}
	}()
	return errc
}

// talk sends messages of the given sizes from a gobwas/ws client on c, all
// at once from one goroutine, and checks the echoes on another; then it
// closes with 1000.
func talk(t *testing.T, c net.Conn, sizes []int) {
	t.Helper()
	werr := make(chan error, 1)
	go func() {
		for i, n := range sizes {
			op := ws.OpBinary
			if i%2 == 0 {
				op = ws.OpText
			}
			if err := wsutil.WriteClientMessage(c, op, payloadOf(n)); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	for i, n := range sizes {
		msg, _, err := wsutil.ReadServerData(c)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(msg, payloadOf(n)) {
			t.Fatalf("message %d: got %d bytes, want %d", i, len(msg), n)
		}
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	body := ws.NewCloseFrameBody(ws.StatusNormalClosure, "done")
	if err := ws.WriteFrame(c, ws.MaskFrame(ws.NewCloseFrame(body))); err != nil {
		t.Fatal(err)
	}
	// Read the answer frame by frame: wsutil's reader would answer a ping
	// still in the stream, and echo the close, after the proxy may have
	// closed the connection (as it should once the handshake is done),
	// and report that write's error instead of the close.
	for {
		f, err := ws.ReadFrame(c)
		if err != nil {
			t.Fatalf("after close: %v, want the echoed close 1000", err)
		}
		if f.Header.OpCode == ws.OpPing {
			continue
		}
		code, _ := ws.ParseCloseFrameData(f.Payload)
		if f.Header.OpCode != ws.OpClose || code != ws.StatusNormalClosure {
			t.Fatalf("after close: %v frame, code %d, want the echoed close 1000", f.Header.OpCode, code)
		}
		return
	}
}

var talkSizes = []int{0, 1, 125, 126, 1000, 65535, 65536, 200000, 3, 16384, 16385, 40000}

func TestGobwasPeers(t *testing.T) {
	r := newRig(t, rigConfig{opt: Options{PingInterval: 50 * time.Millisecond, MaxMessageSize: 1 << 20}})
	backend := echoBackend(r.backend)
	talk(t, r.client, talkSizes)
	st := r.stats(t)
	if st.ClosedBy != "client" || st.ClientCloseCode != 1000 || st.BackendCloseCode != 1000 || st.Err != nil {
		t.Errorf("stats: %+v", st)
	}
	var closed wsutil.ClosedError
	if err := <-backend; !errors.As(err, &closed) {
		t.Errorf("backend ended with %v", err)
	}
}

func TestTLSClient(t *testing.T) {
	cfg := testTLSConfig(t)
	var server *tls.Conn
	r := newRig(t, rigConfig{
		clientPair: func(tb testing.TB) (net.Conn, net.Conn) {
			a, b := tcpPair(tb)
			client := tls.Client(a, &tls.Config{RootCAs: cfg.RootCAs, ServerName: "localhost"})
			server = tls.Server(b, cfg)
			errc := make(chan error, 1)
			go func() { errc <- server.Handshake() }()
			if err := client.Handshake(); err != nil {
				tb.Fatal(err)
			}
			if err := <-errc; err != nil {
				tb.Fatal(err)
			}
			return client, server
		},
	})
	if r.s.client.raw == nil || !r.s.client.tls {
		t.Fatal("the TLS client is not waited on through its socket")
	}
	// Separate small writes are separate TLS records that crypto/tls may
	// take off the socket in one read. The session must deliver all of them
	// although the socket looks idle after the first.
	msgs := repeat(cframe(opText, []byte("record")), 5)
	for _, m := range msgs {
		write(t, r.client, m, 0)
	}
	expectBytes(t, r.backend, cat(msgs...))
	backend := echoBackend(r.backend)
	talk(t, r.client, talkSizes)
	<-backend
	if st := r.stats(t); st.ClosedBy != "client" || st.Err != nil {
		t.Errorf("stats: %+v", st)
	}
}

// testTLSConfig returns a server config with a fresh self-signed certificate
// for localhost; its RootCAs trust it.
func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs:      pool,
	}
}
