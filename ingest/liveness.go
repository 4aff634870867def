package ingest

import "time"

// LastProgress returns the time up to which the commit loops are known to
// be on schedule, for a liveness watchdog: now while each waits for
// commands or is within RequestTimeout of taking its batch, and the end of
// that time for one still in its batch after it. A batch's transaction
// ends at its earliest request deadline, so only a loop stuck past what
// its context bounds falls behind. It is zero while Run is not running.
func (s *Service) LastProgress() time.Time {
	if !s.running.Load() {
		return time.Time{}
	}
	last := time.Now()
	for i := range s.due {
		if d := s.due[i].Load(); d != 0 && d < last.UnixNano() {
			last = time.Unix(0, d)
		}
	}
	return last
}
