// Package rollout is Switchyard's make-before-break protocol for changing which
// expert node holds which experts, written once for both sides:
//
//   - The leader side (Roll, run by the elected coordinator) publishes the next
//     routing table as pending, waits until every expert node of it reports that
//     it holds its assignment (its ready version), then makes the table current
//     and clears pending. It abandons the table (clearing pending) when a node of
//     the table leaves or the nodes do not load in time; store errors (etcd
//     briefly unavailable) are retried until then.
//   - The follower side (Follower, run by every expert node) keeps its node
//     loaded with the union of the current and pending assignments, reports the
//     version it covers only once that union is loaded, and drops replicas that
//     left the table only after a grace period (trunks may still be finishing a
//     step routed by the previous table).
//
// Versions are never reused: a table a former leader left pending is replaced
// by one with a higher version (NextVersion), so a ready report always means the
// node holds exactly that table's assignment.
//
// Both sides talk to the control plane through small interfaces (Store for the
// leader, Target and a report function for the follower): EtcdStore in
// production, Memory in tests. No lock is held across a checkpoint load or a
// store write.
package rollout
