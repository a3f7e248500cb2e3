//! softnce's demonstration: soft-target cross-entropy learns the smoothed targets, soft-target
//! InfoNCE learns the true conditional (Hugger & Uhlmann 2024, arXiv 2404.14076).
//!
//! ```sh
//! cargo run --release --example demo                  # 5 runs (seeds 1-5), their means: ~10 s
//! cargo run --release --example demo -- --quick       # 1 run of 5 epochs (the test's setting): ~1 s
//! cargo run --release --example demo -- --seed 7 --runs 3 --epochs 30 --csv demo.csv
//! ```
//!
//! `--seed S` seeds the first run (run `r` uses seed `S + r`), `--runs R` sets the number of
//! runs (full: 5, quick: 1), `--epochs E` overrides the epochs (full: 20, quick: 5), and
//! `--csv PATH` also writes every run's rows to `PATH`. Progress goes to stderr when it is a
//! terminal.
//!
//! A small MLP (16 → 128 → 10, ReLU, Adam, batches of 256) is trained once per loss on a
//! 10-class Gaussian mixture whose class prior is imbalanced 10:1 and whose posterior
//! `p(y | x)` is therefore known exactly. Every loss value and every gradient with respect to
//! the logits comes from softnce; the layers are `matrixmultiply` sgemm calls. Each model's
//! predictive distribution is `softmax(z)` and is scored on a fresh test set against the
//! truth; the first row is the true posterior itself (the Bayes-optimal classifier). A run
//! draws its own data, initial weights and batch order from its seed; the table shows the
//! means over the runs.
//!
//! What the table shows:
//! - hard InfoNCE with `η` = the class prior is as accurate as cross-entropy; with a uniform
//!   `η` it learns the posterior under a *uniform* prior, so it loses accuracy and its KL to
//!   the truth grows;
//! - with label smoothing or MixUp, soft-target cross-entropy learns the smoothed / mixed
//!   targets: it stays accurate but is badly calibrated (high ECE and KL), while soft-target
//!   InfoNCE keeps the accuracy and stays close to the true conditional.
//!
//! The experiment itself lives in `experiment.rs`, which `tests/demo.rs` reuses.

mod experiment;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use experiment::{Config, Outcome, Settings};

const USAGE: &str =
    "usage: cargo run --release --example demo -- [--quick] [--seed S] [--runs R] [--epochs E] [--csv PATH]";

struct Args {
    settings: Settings,
    runs: usize,
    quick: bool,
    csv: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut seed = 1u64;
    let mut epochs = None;
    let mut runs = None;
    let mut quick = false;
    let mut csv = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => quick = true,
            "--seed" => seed = value("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--epochs" => epochs = Some(value("--epochs")?.parse().map_err(|e| format!("--epochs: {e}"))?),
            "--runs" => runs = Some(value("--runs")?.parse().map_err(|e| format!("--runs: {e}"))?),
            "--csv" => csv = Some(value("--csv")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut settings = if quick {
        Settings::quick(seed)
    } else {
        Settings::full(seed)
    };
    if let Some(e) = epochs {
        settings.epochs = e;
    }
    let runs = runs.unwrap_or(if quick { 1 } else { 5 });
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(Args {
        settings,
        runs,
        quick,
        csv,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("error: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    print_header(&args);

    let start = Instant::now();
    let mut outcomes = Vec::with_capacity(args.runs);
    for r in 0..args.runs {
        let settings = Settings {
            seed: args.settings.seed.wrapping_add(r as u64),
            ..args.settings.clone()
        };
        match run_with_progress(&settings, r, args.runs, start) {
            Ok(o) => outcomes.push((settings.seed, o)),
            Err(e) => {
                eprintln!("\nerror: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let wall = start.elapsed();
    if std::io::stderr().is_terminal() {
        eprint!("\r{:80}\r", "");
    }

    print_table(&outcomes);
    println!("wall time {:.1} s", wall.as_secs_f64());

    if let Some(path) = &args.csv {
        if let Err(e) = write_csv(path, &outcomes) {
            eprintln!("error: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
        println!("wrote {path}");
    }
    ExitCode::SUCCESS
}

fn print_header(args: &Args) {
    let s = &args.settings;
    let prior = experiment::class_prior();
    let backend = softnce::default_backend().map_or_else(|e| format!("unavailable: {e}"), |b| b.to_string());
    let seeds = match args.runs {
        1 => format!("seed {}", s.seed),
        r => format!(
            "seeds {}-{} ({r} runs, the table shows means)",
            s.seed,
            s.seed.wrapping_add(r as u64 - 1)
        ),
    };
    println!("softnce demo: which loss learns the true conditional p(y|x)?");
    println!(
        "data:    {c}-class Gaussian mixture in {d} dims (identity covariance), class prior {hi:.3} .. {lo:.3},\n         \
         {tr} train / {te} test points; {seeds}{q}",
        c = experiment::CLASSES,
        d = experiment::DIM,
        hi = prior[0],
        lo = prior[experiment::CLASSES - 1],
        tr = s.n_train,
        te = s.n_test,
        q = if args.quick { " (--quick)" } else { "" },
    );
    println!(
        "model:   MLP {d}-{h}-{c} (ReLU), Adam lr {lr}, batch {b}, {e} epochs; every loss and dL/dz from\n         \
         softnce (backend {backend}); the prediction is softmax(z) for every loss",
        d = experiment::DIM,
        h = experiment::HIDDEN,
        c = experiment::CLASSES,
        lr = s.lr,
        b = experiment::BATCH,
        e = s.epochs,
    );
    println!(
        "InfoNCE: M = N (the batch's own targets), temperature 1, eta = the training set's class\n         \
         frequencies unless 'uniform'"
    );
    println!(
        "soft:    label smoothing {eps}; MixUp on {r}% of batches: one lambda ~ Beta({a}, {a}) per batch,\n         \
         partner = the reversed batch, x = lambda x_i + (1 - lambda) x_partner",
        eps = experiment::SMOOTHING,
        r = experiment::MIXUP_RATE * 100.0,
        a = experiment::MIXUP_ALPHA,
    );
    std::io::stdout().flush().ok();
}

/// One run, with a progress line on stderr when stderr is a terminal.
fn run_with_progress(
    settings: &Settings,
    run: usize,
    runs: usize,
    start: Instant,
) -> softnce::Result<Outcome> {
    let models = Config::ALL.len() - 1;
    let total = models * settings.epochs;
    let done = Mutex::new(vec![0usize; Config::ALL.len()]);
    let tty = std::io::stderr().is_terminal();
    let progress = |config: Config, epochs_done: usize| {
        if !tty {
            return;
        }
        let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
        done[Config::ALL.iter().position(|&c| c == config).unwrap_or(0)] = epochs_done;
        eprint!(
            "\rrun {}/{runs} (seed {}): {}/{total} model-epochs on {} threads, {:.0} s ",
            run + 1,
            settings.seed,
            done.iter().sum::<usize>(),
            rayon::current_num_threads(),
            start.elapsed().as_secs_f64(),
        );
    };
    experiment::run(settings, &progress)
}

/// Mean and population standard deviation.
fn mean_sd(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = values.clone().count() as f64;
    let mean = values.clone().sum::<f64>() / n;
    let var = values.map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn print_table(outcomes: &[(u64, Outcome)]) {
    println!();
    println!(
        "{:<36} {:>8} {:>8} {:>8} {:>10} {:>9}",
        "classifier (training loss)", "accuracy", "NLL", "ECE", "KL(p||q)", "loss ms"
    );
    let mut worst_sd = [0.0f64; 4];
    for config in Config::ALL {
        let rows = outcomes.iter().map(move |(_, o)| o.row(config));
        let stats = [
            mean_sd(rows.clone().map(|r| r.acc)),
            mean_sd(rows.clone().map(|r| r.nll)),
            mean_sd(rows.clone().map(|r| r.ece)),
            mean_sd(rows.clone().map(|r| r.kl)),
        ];
        for (w, (_, sd)) in worst_sd.iter_mut().zip(&stats) {
            *w = w.max(*sd);
        }
        let ms = match config {
            Config::Bayes => "-".to_string(),
            _ => {
                let ms = rows.map(|r| r.loss_time.map_or(0.0, |t| t.as_secs_f64() * 1e3));
                format!("{:.1}", mean_sd(ms).0)
            }
        };
        println!(
            "{:<36} {:>8.4} {:>8.4} {:>8.4} {:>10.4} {:>9}",
            config.label(),
            stats[0].0,
            stats[1].0,
            stats[2].0,
            stats[3].0,
            ms
        );
    }
    println!("ECE: 15 bins, top label; KL(p||q): p true posterior, q = softmax(z); loss ms: time in softnce per run");
    if outcomes.len() > 1 {
        println!(
            "standard deviation over the {} runs, largest of any row: accuracy {:.4}, NLL {:.4}, ECE {:.4}, KL {:.4}",
            outcomes.len(),
            worst_sd[0],
            worst_sd[1],
            worst_sd[2],
            worst_sd[3]
        );
    }
    let uniform = mean_sd(outcomes.iter().map(|(_, o)| o.uniform_prior_bayes_acc)).0;
    println!("Bayes classifier for a uniform prior (the optimum of InfoNCE with uniform eta): accuracy {uniform:.4}");
}

fn write_csv(path: &str, outcomes: &[(u64, Outcome)]) -> std::io::Result<()> {
    let mut out = String::from("seed,config,accuracy,nll,ece,kl,loss_ms\n");
    for (seed, outcome) in outcomes {
        for row in &outcome.rows {
            let ms = row
                .loss_time
                .map_or_else(String::new, |t| format!("{:.3}", t.as_secs_f64() * 1e3));
            out += &format!(
                "{seed},{},{:.6},{:.6},{:.6},{:.6},{ms}\n",
                row.config.key(),
                row.acc,
                row.nll,
                row.ece,
                row.kl
            );
        }
    }
    std::fs::write(path, out)
}
