package trunknode

import (
	"context"
	"math/rand/v2"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/switchyard-serving/switchyard/internal/telemetry"
)

// startStep opens the span of a forward step when the step is sampled (a
// fraction StepTracing.Ratio of steps). The span is a new root linked to the
// traces of the requests in the batch; the dispatcher hangs one child span per
// layer and expert node under it and propagates it to the expert nodes.
func (s *Scheduler) startStep(ctx context.Context, jobs []*Job, rows int) (context.Context, trace.Span) {
	if s.deps.Tracer == nil || s.deps.Tracing.Ratio <= 0 || rand.Float64() >= s.deps.Tracing.Ratio {
		return ctx, nil
	}
	ctx, span := s.deps.Tracer.Start(ctx, "forward_step", trace.WithNewRoot(), trace.WithLinks(requestLinks(jobs)...),
		trace.WithAttributes(attribute.Int("batch_size", len(jobs)), attribute.Int("rows", rows)))
	linkBack(jobs, span)
	return ctx, span
}

// requestLinks links a step's trace to the traces of the requests in it.
func requestLinks(jobs []*Job) []trace.Link {
	links := make([]trace.Link, 0, len(jobs))
	for _, j := range jobs {
		if sc := trace.SpanContextFromContext(j.ctx); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.String("session", j.sess.ID)}})
		}
	}
	return links
}

// linkBack links each request's span to the step trace it took part in, so a
// user in Jaeger goes from a slow request to the step, the expert node and
// the layer that made it slow (the SDK caps links per span at 128).
func linkBack(jobs []*Job, step trace.Span) {
	sc := step.SpanContext()
	for _, j := range jobs {
		if rs := trace.SpanFromContext(j.ctx); rs.SpanContext().IsValid() {
			rs.AddLink(trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.String("link", "forward_step")}})
		}
	}
}

// finishStep ends the step span; an unsampled step slower than the threshold is
// traced after the fact from the recorded dispatch calls (trunk side only).
func (s *Scheduler) finishStep(ctx context.Context, span trace.Span, start time.Time, d time.Duration, jobs []*Job, rows int, calls []CallInfo, err error) {
	if span != nil {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		return
	}
	if s.deps.Tracer == nil || s.deps.Tracing.SlowThreshold <= 0 || d < s.deps.Tracing.SlowThreshold {
		return
	}
	ctx, sp := s.deps.Tracer.Start(ctx, "forward_step", trace.WithNewRoot(), trace.WithTimestamp(start), trace.WithLinks(requestLinks(jobs)...),
		trace.WithAttributes(attribute.Int("batch_size", len(jobs)), attribute.Int("rows", rows), attribute.Bool("slow", true)))
	linkBack(jobs, sp)
	for _, c := range calls {
		_, cs := s.deps.Tracer.Start(ctx, "dispatch", trace.WithTimestamp(c.Start), trace.WithAttributes(callAttrs(c)...))
		if c.Err != nil {
			cs.SetStatus(codes.Error, c.Err.Error())
		}
		cs.End(trace.WithTimestamp(c.Start.Add(c.RTT)))
	}
	if err != nil {
		sp.SetStatus(codes.Error, err.Error())
	}
	sp.End(trace.WithTimestamp(start.Add(d)))
}

func callAttrs(c CallInfo) []attribute.KeyValue {
	return []attribute.KeyValue{attribute.Int("layer", c.Layer), attribute.String("expert_node", c.Node), attribute.Int("rows", c.Rows),
		attribute.Int("pairs", c.Pairs), attribute.Int("bytes_out", c.BytesOut), attribute.Int("bytes_in", c.BytesIn),
		attribute.Int("retry", c.Attempt), attribute.Int64("node_compute_us", c.Compute.Microseconds())}
}

// traceCall opens the dispatch span of one node call (when the step is traced)
// and returns the W3C context to put on the stream messages.
func (d *Dispatcher) traceCall(parent context.Context, info *CallInfo) (trace.Span, map[string]string) {
	info.ctx = parent
	if d.tracer == nil || !trace.SpanContextFromContext(parent).IsSampled() {
		return nil, nil
	}
	ctx, span := d.tracer.Start(parent, "dispatch", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.Int("layer", info.Layer), attribute.String("expert_node", info.Node), attribute.Int("retry", info.Attempt)))
	info.ctx = ctx
	carrier := telemetry.MapCarrier{}
	telemetry.Propagator.Inject(ctx, carrier)
	return span, carrier
}
