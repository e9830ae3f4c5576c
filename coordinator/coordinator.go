// Package coordinator is the control plane of a Switchyard cluster. It keeps the
// cluster state in etcd (key schema: package internal/cluster), places experts on
// expert nodes by measured activation frequency through the pure placement
// package, and publishes the routing table trunk nodes follow.
//
// Several coordinators may run; one is leader through an etcd election
// (cluster.ElectionKey) and the others take over when its session expires. The
// leader re-plans periodically and whenever expert-node membership changes, and
// rolls every change out make-before-break:
//
//  1. publish the next table as pending (cluster.PendingKey);
//  2. expert nodes load the union of the current and pending assignments and
//     report the version they hold (cluster.ReadyPrefix);
//  3. once every node of the new table is ready, publish it as current: trunk
//     nodes switch at their next layer call;
//  4. expert nodes drop replicas that left the table after a grace period.
//
// The coordinator is never on the token path: if it (or etcd) is down, trunks keep
// serving on their last table.
package coordinator
