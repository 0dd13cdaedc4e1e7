//go:build linux

// Command profsluice is sluice's `run` with profiling, for the benchmark
// (bench/run.sh PROFILE=1): it serves a configuration exactly as `sluice run`
// does, through the same server package, while writing a CPU profile, and
// on SIGTERM or SIGINT it shuts down and writes an allocation profile
// (runtime heap profile; read with -sample_index=alloc_space or
// alloc_objects). SIGUSR1 writes a snapshot of the live heap (inuse_space)
// and of the goroutines, for memory per idle session. sluice itself has no
// profiling endpoint; this wrapper keeps it that way.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/server"
)

func main() {
	cfgPath := flag.String("config", "sluice.yaml", "configuration `FILE`")
	cpuOut := flag.String("cpuprofile", "cpu.pprof", "CPU profile `file`")
	memOut := flag.String("memprofile", "alloc.pprof", "allocation profile `file`, written on exit")
	heapOut := flag.String("heapprofile", "heap.pprof", "live-heap profile `file`, written on SIGUSR1 (goroutines go to FILE.goroutines)")
	flag.Parse()
	if err := run(*cfgPath, *cpuOut, *memOut, *heapOut); err != nil {
		fmt.Fprintln(os.Stderr, "profsluice:", err)
		os.Exit(1)
	}
}

func run(cfgPath, cpuOut, memOut, heapOut string) error {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	srv, err := server.New(cfg, server.Options{Logger: logger})
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	snap := make(chan os.Signal, 1)
	signal.Notify(snap, syscall.SIGUSR1)
	cpu, err := os.Create(cpuOut)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		pprof.StopCPUProfile()
		return err
	}
	fmt.Fprintf(os.Stderr, "profsluice: serving, pid %d\n", os.Getpid())
	for waiting := true; waiting; {
		select {
		case <-snap:
			if err := snapshot(heapOut); err != nil {
				fmt.Fprintln(os.Stderr, "profsluice:", err)
			}
		case <-sigs:
			waiting = false
		}
	}
	pprof.StopCPUProfile()
	if err := cpu.Close(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	mem, err := os.Create(memOut)
	if err != nil {
		return err
	}
	runtime.GC() // settle the in-use figures; alloc_* count since start either way
	if err := pprof.Lookup("allocs").WriteTo(mem, 0); err != nil {
		return err
	}
	return mem.Close()
}

// snapshot writes the live heap to file and the goroutine profile to
// file.goroutines.
func snapshot(file string) error {
	runtime.GC()
	for _, p := range []struct{ name, file string }{{"heap", file}, {"goroutine", file + ".goroutines"}} {
		f, err := os.Create(p.file)
		if err != nil {
			return err
		}
		err = pprof.Lookup(p.name).WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "profsluice: heap snapshot in %s, %d goroutines\n", file, runtime.NumGoroutine())
	return nil
}
