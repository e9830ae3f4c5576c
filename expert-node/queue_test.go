package expertnode

import (
	"slices"
	"testing"
	"time"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

func TestQueueTake(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rows    []uint32
		maxRows int
		want    []uint32 // rows of the jobs taken
		left    int      // rows left queued
	}{
		{"everything fits", []uint32{3, 4, 5}, 100, []uint32{3, 4, 5}, 0},
		{"exactly the cap", []uint32{3, 4, 5}, 7, []uint32{3, 4}, 5},
		{"stops at the first that does not fit", []uint32{3, 9, 1}, 10, []uint32{3}, 10},
		{"an oversized first job is taken alone", []uint32{50, 1}, 10, []uint32{50}, 1},
		{"empty", nil, 10, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q queue
			q.init()
			for _, r := range tc.rows {
				q.push(&job{b: &pb.ExpertBatch{Rows: r}})
			}
			var got []uint32
			for _, j := range q.take(tc.maxRows) {
				got = append(got, j.b.Rows)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("take = %v, want %v", got, tc.want)
			}
			if _, rows := q.state(); rows != tc.left {
				t.Fatalf("%d rows left, want %d", rows, tc.left)
			}
		})
	}
}

func TestQueueWait(t *testing.T) {
	checkGoroutines(t)
	var q queue
	q.init()
	stop := make(chan struct{})
	// Window filled: returns as soon as maxRows rows are queued.
	done := make(chan bool)
	go func() { done <- q.wait(stop, time.Hour, 5) }()
	q.push(&job{b: &pb.ExpertBatch{Rows: 2}})
	q.push(&job{b: &pb.ExpertBatch{Rows: 3}})
	if !<-done {
		t.Fatal("wait reported stop")
	}
	q.take(5)
	// Stop while empty.
	go func() { done <- q.wait(stop, 0, 5) }()
	close(stop)
	if <-done {
		t.Fatal("wait returned true after stop with nothing queued")
	}
	// A closed queue refuses pushes and returns what it held.
	q.push(&job{b: &pb.ExpertBatch{Rows: 1}})
	if left := q.close(); len(left) != 1 {
		t.Fatalf("close returned %d jobs, want 1", len(left))
	}
	if q.push(&job{b: &pb.ExpertBatch{Rows: 1}}) {
		t.Fatal("push on a closed queue succeeded")
	}
}
