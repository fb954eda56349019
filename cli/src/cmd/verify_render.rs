//! The human-readable table of a `quern verify` report.

use std::fmt::Write;

use quern_runtime::verify::Report;

fn opt(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(x) => format!("{x:.prec$}"),
        None => "–".to_string(),
    }
}

fn snr(v: Option<f64>) -> String {
    match v {
        Some(x) => format!("{x:.1}"),
        None => "inf".to_string(),
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(16)]
}

/// The report as text for a terminal.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "artifact  {} ({}, {}, {:.2} MB, sha256 {}…)",
        r.artifact.path,
        r.artifact.format,
        r.artifact.arch,
        r.artifact.bytes as f64 / 1e6,
        short(&r.artifact.sha256)
    );
    let _ = writeln!(
        w,
        "reference {} ({}, {}, {:.2} MB, sha256 {}…)",
        r.reference.path,
        r.reference.format,
        r.reference.arch,
        r.reference.bytes as f64 / 1e6,
        short(&r.reference.sha256)
    );

    let wt = &r.weights;
    let _ = writeln!(
        w,
        "\nweights: {} tensors, {:.2} M weights, {:.3} bits per weight; relative RMS error {}, SNR {} dB, cosine {}",
        wt.compared,
        wt.elements as f64 / 1e6,
        wt.bits_per_weight,
        opt(wt.overall.rel_rms_error, 5),
        snr(wt.overall.snr_db),
        opt(wt.overall.cosine, 6)
    );
    let _ = writeln!(
        w,
        "  {:<10} {:>7} {:>10} {:>6} {:>9} {:>7} {:>8} {:>9}  worst tensor",
        "type", "tensors", "weights", "bpw", "rel RMS", "SNR dB", "min SNR", "min cos"
    );
    for t in &wt.by_type {
        let _ = writeln!(
            w,
            "  {:<10} {:>7} {:>9.2}M {:>6.3} {:>9} {:>7} {:>8} {:>9}  {}",
            t.ty,
            t.tensors,
            t.elements as f64 / 1e6,
            t.bits_per_weight,
            opt(t.stats.rel_rms_error, 5),
            snr(t.stats.snr_db),
            snr(t.min_snr_db),
            opt(t.min_cosine, 6),
            t.worst_tensor
        );
    }
    if !wt.worst.is_empty() {
        let _ = writeln!(w, "  worst tensors:");
        for name in &wt.worst {
            if let Some(t) = wt.tensors.iter().find(|t| &t.tensor == name) {
                let _ = writeln!(
                    w,
                    "    {:<28} {:<6} rel RMS {:>8}  max|e| {:.4}  cos {:>8}  SNR {:>5} dB",
                    t.tensor,
                    t.artifact_type,
                    opt(t.stats.rel_rms_error, 5),
                    t.stats.max_abs_error,
                    opt(t.stats.cosine, 6),
                    snr(t.stats.snr_db)
                );
            }
        }
    }
    if !wt.not_compared.is_empty() {
        let names: Vec<String> = wt
            .not_compared
            .iter()
            .map(|n| format!("{} ({}: {})", n.name, n.side, n.reason))
            .collect();
        let _ = writeln!(w, "  not compared: {}", names.join(", "));
    }

    if let Some(o) = &r.outputs {
        let _ = writeln!(
            w,
            "\noutputs: {} ({} tokens, sha256 {}…), {} of {} chunks of {} tokens, {} scored tokens, {} threads",
            r.text.source,
            r.text.tokens,
            short(&r.text.sha256),
            r.settings.chunks,
            r.settings.chunks_available,
            r.settings.ctx,
            o.scored_tokens,
            r.settings.threads
        );
        let _ = writeln!(
            w,
            "  PPL reference {:.4} ± {:.4}, artifact {:.4} ± {:.4}, ratio {:.4} (ln {:.5} ± {:.5})",
            o.ppl_reference.value,
            o.ppl_reference.error,
            o.ppl_artifact.value,
            o.ppl_artifact.error,
            o.ppl_ratio,
            o.ln_ppl_ratio.value,
            o.ln_ppl_ratio.error
        );
        let k = &o.kld;
        let _ = writeln!(
            w,
            "  KLD mean {:.6} ± {:.6}, median {:.6}, p99 {:.6}, p99.9 {:.6}, max {:.6}",
            k.mean, k.error, k.median, k.p99, k.p999, k.max
        );
        let _ = writeln!(
            w,
            "  top-1 agreement {:.3} ± {:.3} %",
            100.0 * o.top1_agreement.value,
            100.0 * o.top1_agreement.error
        );
        let d = &o.delta_p;
        let _ = writeln!(
            w,
            "  Δp (artifact - reference, right token) mean {:.3} ± {:.3} %, RMS {:.3} %, p1 {:.3} %, p99 {:.3} %",
            100.0 * d.mean,
            100.0 * d.error,
            100.0 * d.rms,
            100.0 * d.p01,
            100.0 * d.p99
        );
        if !o.largest_drops.is_empty() {
            let _ = writeln!(w, "  largest probability drops:");
            for d in &o.largest_drops {
                let _ = writeln!(
                    w,
                    "    chunk {:>3} position {:>4} token {:>6} {:<16} {:.4} -> {:.4}",
                    d.chunk,
                    d.position + 1,
                    d.token,
                    format!("{:?}", d.text),
                    d.p_reference,
                    d.p_artifact
                );
            }
        }
    }
    let _ = writeln!(
        w,
        "\ntime: sha256 {:.1} s, weights {:.1} s, outputs {:.1} s, total {:.1} s",
        r.seconds.hash, r.seconds.weights, r.seconds.outputs, r.seconds.total
    );
    if r.thresholds.max_kld.is_some()
        || r.thresholds.min_top1.is_some()
        || r.thresholds.max_ppl_ratio.is_some()
    {
        if r.passed {
            let _ = writeln!(w, "PASS: every threshold holds");
        } else {
            for v in &r.violations {
                let _ = writeln!(
                    w,
                    "FAIL: {} {} crossed: {:.6}",
                    v.threshold, v.limit, v.value
                );
            }
        }
    }
    s
}
