package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/doctor"
	"github.com/grapevine-net/grapevine/status"
)

// doctorStatusWait bounds the status request: the agent answers after its
// running pass, and doctor should be done in 5 s on a healthy host.
// doctorDeadline bounds the whole run, should a kernel read or
// iptables-legacy-save hang.
const (
	doctorStatusWait = 3 * time.Second
	doctorDeadline   = 10 * time.Second
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check this host and its paths to the peers; each finding says what was seen, the likely cause and the fix (exit status 1 on any failure); changes nothing",
		Flags: []cli.Flag{
			runDirFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print the findings as JSON"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "also list the checks that passed"},
			&cli.BoolFlag{Name: "all", Usage: "run on every live host of the mesh (through this host's agent and the peers' agents) and print one table"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			if c.Bool("all") {
				return doctorAllCommand(c)
			}
			findings := runDoctor(c.Context, c.String("run-dir"), doctor.NewLinuxHost(), &doctor.LinuxNetwork{})
			var err error
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				err = enc.Encode(findings)
			} else {
				err = printFindings(c.App.Writer, findings, c.Bool("verbose"))
			}
			if err != nil {
				return err
			}
			return failedChecks(findings)
		},
	}
}

// runDoctor reads the agent's status and the host, and judges them.
func runDoctor(ctx context.Context, runDir string, host doctor.Host, network doctor.Network) []doctor.Finding {
	ctx, cancelRun := context.WithTimeout(ctx, doctorDeadline)
	defer cancelRun()
	statusCtx, cancel := context.WithTimeout(ctx, doctorStatusWait)
	defer cancel()
	var st status.Report
	body, err := callAgent(statusCtx, runDir, http.MethodGet, "/status")
	if err == nil {
		if jerr := json.Unmarshal(body, &st); jerr != nil {
			err = fmt.Errorf("agent answered with unreadable status: %w", jerr)
		}
	}
	return doctor.Diagnose(doctor.Observe(ctx, host, network, st, err))
}

// failedChecks is the command's error when a check failed: main prints it
// and exits with status 1.
func failedChecks(fs []doctor.Finding) error {
	var failed []string
	for _, f := range fs {
		if f.Severity == doctor.Fail {
			failed = append(failed, f.Check)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("%d check(s) failed: %s", len(failed), strings.Join(failed, ", "))
}

// printFindings shows the warnings and failures with cause and fix, and a
// line per passed check when verbose; a summary line ends it.
func printFindings(w io.Writer, fs []doctor.Finding, verbose bool) error {
	counts := map[doctor.Severity]int{}
	for _, f := range fs {
		counts[f.Severity]++
		if f.Severity == doctor.OK && !verbose {
			continue
		}
		what := f.Check
		if f.Subject != "" {
			what += " " + f.Subject
		}
		fmt.Fprintf(w, "%-5s %s: %s\n", strings.ToUpper(string(f.Severity)), what, f.Seen)
		if f.Severity != doctor.OK {
			fmt.Fprintf(w, "      cause: %s\n      fix:   %s\n", f.Cause, f.Fix)
		}
	}
	_, err := fmt.Fprintf(w, "%d passed, %d warnings, %d failed (docs/troubleshooting.md has a section per check)\n", counts[doctor.OK], counts[doctor.Warn], counts[doctor.Fail])
	return err
}

// doctorAllCommand asks the agent for every host's findings and prints
// them as one table (or JSON); it fails if any host has a failed check or
// gave no findings.
func doctorAllCommand(c *cli.Context) error {
	ctx, cancel := context.WithTimeout(c.Context, doctorAllWait+time.Second)
	defer cancel()
	body, err := callAgent(ctx, c.String("run-dir"), http.MethodGet, "/doctor/all")
	if err != nil {
		return err
	}
	var all []doctor.Summary
	if err := json.Unmarshal(body, &all); err != nil {
		return fmt.Errorf("agent answered with unreadable findings: %w", err)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		err = enc.Encode(all)
	} else {
		err = printSummaries(c.App.Writer, all)
	}
	if err != nil {
		return err
	}
	var bad []string
	for _, s := range all {
		if s.Failed > 0 || s.Err != "" && len(s.Findings) == 0 {
			bad = append(bad, s.Host)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d host(s) with failed checks or no findings: %s", len(bad), strings.Join(bad, ", "))
	}
	return nil
}

// printSummaries is doctor --all's table: a line per host with its counts,
// then one per warning or failure.
func printSummaries(w io.Writer, all []doctor.Summary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tRESULT\tCHECK\tSUBJECT\tSEEN")
	for _, s := range all {
		result := fmt.Sprintf("%d passed, %d warnings, %d failed", s.Passed, s.Warnings, s.Failed)
		if s.Err != "" && len(s.Findings) == 0 {
			result = "NOT CHECKED"
		}
		fmt.Fprintf(tw, "%s\t%s\t\t\t%s\n", s.Host, result, s.Err)
		for _, f := range s.Findings {
			fmt.Fprintf(tw, "\t%s\t%s\t%s\t%s\n", strings.ToUpper(string(f.Severity)), f.Check, orDash(f.Subject), f.Seen)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, "causes and fixes: grapevine doctor on the host named")
	return err
}
