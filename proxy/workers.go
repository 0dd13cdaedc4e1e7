package proxy

import (
	"sync/atomic"
	"time"
)

// Connections are served on goroutines that outlive them. A goroutine that
// finishes a connection waits a little for the next one instead of ending,
// so that a new connection does not pay for starting a goroutine and for
// growing its stack: the handshake path runs deep (through net's dialer)
// and would copy a fresh stack twice. At most maxIdleWorkers wait at once,
// each for at most workerLinger since it last served, and all of them end
// when the server closes.
const (
	maxIdleWorkers = 64
	workerLinger   = 5 * time.Second
)

// workers hands accepted connections to idle serving goroutines.
type workers struct {
	next chan *serverConn // unbuffered: a send succeeds only to a waiting worker
	quit chan struct{}    // closed when the server closes
	idle atomic.Int32
}

func newWorkers() *workers {
	return &workers{next: make(chan *serverConn), quit: make(chan struct{})}
}

// serve runs sc on an idle worker, or on a new one.
func (w *workers) serve(sc *serverConn) {
	select {
	case w.next <- sc:
	default:
		go w.work(sc)
	}
}

// work serves sc, then the connections handed to it, until it has waited
// workerLinger without one, too many others wait, or the server closes.
func (w *workers) work(sc *serverConn) {
	var t *time.Timer
	served, seen := 0, 0
	for sc != nil {
		sc.run()
		served++
		if w.idle.Add(1) > maxIdleWorkers {
			w.idle.Add(-1)
			return
		}
		if t == nil {
			t = time.NewTimer(workerLinger)
			defer t.Stop()
		}
		sc = nil
		for sc == nil {
			select {
			case sc = <-w.next:
			case <-t.C:
				// The timer runs from the last time it fired, not from
				// the end of each connection (a reset per connection
				// would cost more than it saves): it ends the worker
				// only after a whole period without a connection.
				if served == seen {
					w.idle.Add(-1)
					return
				}
				seen = served
				t.Reset(workerLinger)
			case <-w.quit:
				w.idle.Add(-1)
				return
			}
		}
		w.idle.Add(-1)
	}
}

// close ends the idle workers; busy ones end after their connection.
func (w *workers) close() {
	select {
	case <-w.quit:
	default:
		close(w.quit)
	}
}
