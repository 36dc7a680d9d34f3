package fhir

import (
	"errors"
	"testing"
)

func TestReservation(t *testing.T) {
	b := newBudget(3 * reserveChunk)
	r1 := b.reserve()
	if err := r1.charge(10); err != nil {
		t.Fatal(err)
	}
	if got, want := b.inUse(), int64(reserveChunk); got != want {
		t.Fatalf("inUse=%d after a small charge, want one chunk %d", got, want)
	}
	if err := r1.charge(reserveChunk); err != nil { // crosses into a second chunk
		t.Fatal(err)
	}
	if got, want := b.inUse(), int64(2*reserveChunk); got != want {
		t.Fatalf("inUse=%d, want %d", got, want)
	}
	r2 := b.reserve()
	if err := r2.charge(reserveChunk + 1); !errors.Is(err, errOverBudget) {
		t.Fatalf("charge past what others left = %v, want errOverBudget", err)
	}
	if err := r2.charge(reserveChunk); err != nil { // exactly what is left
		t.Fatalf("charge of what is left = %v", err)
	}
	r3 := b.reserve()
	if err := r3.charge(3*reserveChunk + 1); !errors.Is(err, errTooBig) {
		t.Fatalf("charge past the whole budget = %v, want errTooBig", err)
	}
	r1.releaseAll()
	r2.releaseAll()
	r3.releaseAll()
	if got := b.inUse(); got != 0 {
		t.Fatalf("inUse=%d after every release, want 0", got)
	}
	// The last bytes of the budget are usable even when a whole chunk does not fit.
	r4 := b.reserve()
	if err := r4.charge(3*reserveChunk - 1); err != nil {
		t.Fatal(err)
	}
	if err := r4.charge(1); err != nil {
		t.Fatalf("charge of the last byte = %v", err)
	}
	r4.releaseAll()
	var nilRes *reservation
	if err := nilRes.charge(1 << 40); err != nil {
		t.Fatalf("nil reservation charged: %v", err)
	}
	nilRes.releaseAll()
}
