// Package supervise runs the agent's work: start-up steps in order, goroutines that live until the
// context ends, and periodic work through one ticker loop. Each piece has a name, which the log uses.
package supervise

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Step is one start-up step.
type Step struct {
	Name string
	Run  func() error
}

// Steps runs steps in order and returns the first error as it is (the steps' errors already say what
// to do); the steps after it do not run.
func Steps(log *slog.Logger, steps ...Step) error {
	for _, s := range steps {
		if err := s.Run(); err != nil {
			log.Debug("start-up step failed", "step", s.Name, "error", err)
			return err
		}
		log.Debug("start-up step done", "step", s.Name)
	}
	return nil
}

// Group runs named goroutines until its context ends.
type Group struct {
	ctx context.Context
	log *slog.Logger
	wg  sync.WaitGroup
}

// New returns a group whose work stops when ctx ends.
func New(ctx context.Context, log *slog.Logger) *Group {
	return &Group{ctx: ctx, log: log}
}

// Go runs fn until it returns; an error is logged with the work's name.
func (g *Group) Go(name string, fn func(ctx context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := fn(g.ctx); err != nil {
			g.log.Error(name+" stopped", "error", err)
		}
	}()
}

// Every calls fn every interval (first after one interval) until the context ends.
func (g *Group) Every(name string, interval time.Duration, fn func(now time.Time)) {
	g.Go(name, func(ctx context.Context) error {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case now := <-t.C:
				fn(now)
			}
		}
	})
}

// Wait waits for every goroutine of the group to return.
func (g *Group) Wait() { g.wg.Wait() }
