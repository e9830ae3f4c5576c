// Package placement decides which expert nodes hold which experts: a pure,
// deterministic function from a Snapshot of the cluster to a Plan (Compute).
// It does no I/O, imports only the standard library and is safe for
// concurrent use; the coordinator wraps it. The objective and the algorithm
// are below; `switchyard placement simulate` compares it with round-robin
// under skewed, drifting load.
//
// # Input
//
// A Snapshot lists the expert nodes (ID, alive, capacity in expert slots),
// the model shape (Layers x Experts), the measured load per (layer, expert)
// (an EMA of activation counts, say; all zero means unknown and is treated
// as uniform) and the placement in force (nil the first time). Options set
// the fewest replicas of every expert (MinReplicas, 2 by default), the share
// of redundant replicas, the migration budget per round and the least gain
// worth migrating for.
//
// # Output
//
// A Plan gives, for every (layer, expert), the alive nodes holding a replica
// (distinct nodes, at least MinReplicas where the nodes and slots allow,
// else at least one) and the share of the expert's traffic each
// should take (shares sum to 1), the predicted load per node and per (layer,
// node), the imbalance, and how many replicas were added (Moves, of which
// Repairs re-cover lost experts) and dropped against the current placement.
//
// # Objective
//
// Every MoE layer is a separate synchronous dispatch: a step waits for the
// slowest expert node of each layer in turn. So the planner minimises
//
//	J = (1/L) * sum over layers l of  max_n X[l][n] / mean_n X[l][n]
//
// where X[l][n] = sum over replicas (l, e, n) of Share * Load[l][e] is the
// predicted load of alive node n in layer l. J = 1 is perfect balance; it is
// reported as Plan.Imbalance.
//
// # Algorithm
//
// Loads are normalised per layer (mean node load 1), so layers compete for
// slots on equal terms.
//
//  1. Replication (first placement): the replicas beyond one per expert,
//     (MinReplicas-1) * L * E + round(RedundantSlotsFraction * L * E) bounded
//     by capacity, go one at a time first to the experts below MinReplicas,
//     then to any, each time to the (layer, expert) with the highest load per
//     replica (DeepSeek EPLB's rule, but across all layers, so skewed layers
//     get more).
//  2. Packing: every node takes a similar number of each layer's replicas
//     (quotas within its capacity), and each layer's replicas, heaviest first,
//     go to the least loaded node with quota left that lacks the expert
//     (longest-processing-time greedy, replicas of an expert on distinct
//     nodes).
//  3. Shares by water-filling instead of load/replicas: each replicated
//     expert's load fills its nodes up to a common level above the others'
//     load; sweeping until nothing moves reaches the least max per layer.
//  4. Local search: from the nodes at a layer's max, relocate a replica to a
//     free slot, swap two replicas, or add a replica to a hot expert (in a
//     free slot, or one freed by dropping a replica of an expert that has
//     several, there or after moving a replica on to where the drop frees a
//     slot). Candidates are ranked by cheap estimates, the best few are
//     tried exactly (applied, rebalanced, undone), and the one with the most
//     gain per replica loaded is taken, again and again. A first placement
//     polishes without a budget.
//
// The floor: with MinReplicas = 2 every expert is on two nodes, so one node's
// death leaves every expert a live replica and the trunks re-dispatch at once
// (no stall waiting for a new table). It holds while the alive nodes' usable
// slots, the sum of min(Capacity, L*E), are at least MinReplicas*L*E; below
// that every slot is still used, the hottest experts getting their second
// replica first, but nothing forces the floor.
//
// With a current placement, Compute keeps every replica where it is,
// re-places the replicas of dead nodes, fixes capacity and restores the floor
// first (outside the budget; an expert is never left without an alive
// replica), rebalances
// shares (free: only the routing table changes), and then runs step 4 for at
// most MigrationBudget replica loads, keeping the moves only if they lower J
// by at least MinGain. Ties are broken by node ID and (layer, expert) order,
// so the plan depends only on the input.
//
// Simulate runs rounds of Compute against Zipf-skewed, shifting loads and
// compares it with round-robin placement; `switchyard placement simulate`
// prints its table.
package placement
