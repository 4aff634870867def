package store

import "sync"

// Signal is a broadcast wake-up: every channel returned by C is closed by
// the next Broadcast. Dialects use it to implement DB.AppendSignal.
type Signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// C returns the channel the next Broadcast closes.
func (s *Signal) C() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

// Broadcast wakes everybody waiting on a channel from C.
func (s *Signal) Broadcast() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}
