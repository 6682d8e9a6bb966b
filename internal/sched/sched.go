// Package sched puts the process's threads under Linux's SCHED_BATCH
// scheduling policy, for the processes that read a replication slot.
//
// A reader and PostgreSQL's walsender that feeds it pass each change over a
// socket: the walsender writes a message, which wakes the reader. Under the
// default policy a woken thread preempts the thread that woke it when its
// CPU is shared, so a walsender with changes waiting is preempted by the
// reader at every message it sends, and waits behind the process's other
// threads (the embedded JetStream, a gateway) for the CPU back: it then
// sends little more than the changes still arriving, and a backlog it
// builds in a moment of load (a collection, a checkpoint's burst of WAL)
// takes seconds to drain. A SCHED_BATCH thread never preempts on waking;
// it runs when the woken-up thread's turn comes, as under the default
// policy otherwise, with the same share of the CPU. The walsender then
// sends what it has before the reader runs, and the reader takes it in one
// read (scripts/bench-latency.sh, README "Performance").
//
// Threads already under another policy (an operator's SCHED_IDLE, a
// realtime policy, or SCHED_BATCH set by systemd's CPUSchedulingPolicy)
// keep it.
package sched
