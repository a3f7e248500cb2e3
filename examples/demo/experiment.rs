//! The experiment behind `cargo run --release --example demo`, shared with `tests/demo.rs`.
//!
//! Data whose true conditional `p(y | x)` is known exactly: a 10-class Gaussian mixture in 16
//! dimensions (identity covariance, class means `r·u_k` on random orthonormal directions
//! `u_k`, so every pair of means is `r·√2` apart) with an imbalanced class prior
//! `π_k ∝ 10^(−k/9)` (10× between the most and the least frequent class). A small MLP
//! 16 → 128 → 10 (ReLU) is trained on it with Adam once per loss configuration; the layers are
//! `matrixmultiply` sgemm calls, and every loss value and gradient with respect to the logits
//! comes from softnce. Each trained model is scored on a fresh test set against the true
//! posterior: accuracy, NLL, expected calibration error and `KL(p(·|x) ‖ softmax(z(x)))`.
//!
//! Everything is generated from one seed by the small deterministic generator below; the
//! models are trained in parallel on rayon's pool, each single-threaded and with the same
//! initial weights and the same batch order (and the MixUp configurations the same `λ`s), so
//! the rows differ only in their loss.
//!
//! The one `unsafe` block is the call to `matrixmultiply::sgemm`, whose API takes raw
//! pointers; [`gemm`] checks every shape and length before it.

use std::time::{Duration, Instant};

use rayon::prelude::*;
use softnce::{HardCrossEntropy, MatMut, MatRef, Noise, RowParam, SoftCrossEntropy, SoftInfoNce, Targets};

/// Number of classes.
pub const CLASSES: usize = 10;
/// Input dimension.
pub const DIM: usize = 16;
/// Hidden units of the MLP.
pub const HIDDEN: usize = 128;
/// Mini-batch size (also `M = N` for InfoNCE: each batch's own targets are the candidates).
pub const BATCH: usize = 256;
/// Distance of every class mean from the origin (σ = 1); gives a Bayes accuracy near 0.915.
pub const MEAN_RADIUS: f64 = 3.0;
/// Ratio between the most and the least frequent class.
pub const PRIOR_RATIO: f64 = 10.0;
/// Label smoothing of the soft-target configurations.
pub const SMOOTHING: f32 = 0.1;
/// MixUp's `λ ~ Beta(α, α)`, one `λ` per batch.
pub const MIXUP_ALPHA: f64 = 0.8;
/// Fraction of batches that MixUp is applied to.
pub const MIXUP_RATE: f64 = 0.8;
/// Bins of the expected calibration error.
pub const ECE_BINS: usize = 15;

/// Sizes and optimiser settings of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Seed of the data, the initial weights, the batch order and MixUp.
    pub seed: u64,
    /// Passes over the training set.
    pub epochs: usize,
    /// Training points.
    pub n_train: usize,
    /// Test points.
    pub n_test: usize,
    /// Adam's step size (β = 0.9, 0.999), constant for the first half of training, then
    /// decayed linearly to 0.
    pub lr: f32,
}

impl Settings {
    /// The full demo's run: 20k training and 20k test points, 20 epochs.
    pub fn full(seed: u64) -> Self {
        Settings {
            seed,
            epochs: 20,
            n_train: 20_000,
            n_test: 20_000,
            lr: 1e-3,
        }
    }

    /// The quick run (and the test's): the same data sizes, 5 epochs. The test set stays at
    /// 20k points so that accuracy differences of half a point are resolved.
    pub fn quick(seed: u64) -> Self {
        Settings {
            epochs: 5,
            ..Settings::full(seed)
        }
    }
}

/// One row of the table: a classifier and the loss it was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    /// The true posterior `p(y | x)` (nothing trained).
    Bayes,
    /// Hard cross-entropy.
    HardCe,
    /// Hard InfoNCE with `η` = the empirical class prior of the training set.
    HardNcePrior,
    /// Hard InfoNCE with uniform `η`.
    HardNceUniform,
    /// Soft-target cross-entropy, label smoothing 0.1.
    SoftCeSmooth,
    /// Soft-target InfoNCE (`η` = prior), label smoothing 0.1.
    SoftNceSmooth,
    /// Soft-target cross-entropy, MixUp + label smoothing 0.1.
    SoftCeMixup,
    /// Soft-target InfoNCE (`η` = prior), MixUp + label smoothing 0.1.
    SoftNceMixup,
}

impl Config {
    /// Every row, in table order.
    pub const ALL: [Config; 8] = [
        Config::Bayes,
        Config::HardCe,
        Config::HardNcePrior,
        Config::HardNceUniform,
        Config::SoftCeSmooth,
        Config::SoftNceSmooth,
        Config::SoftCeMixup,
        Config::SoftNceMixup,
    ];

    /// The row's name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Config::Bayes => "Bayes-optimal (true posterior)",
            Config::HardCe => "hard CE",
            Config::HardNcePrior => "hard InfoNCE, eta = prior",
            Config::HardNceUniform => "hard InfoNCE, eta = uniform",
            Config::SoftCeSmooth => "soft CE, smoothing 0.1",
            Config::SoftNceSmooth => "soft InfoNCE, smoothing 0.1",
            Config::SoftCeMixup => "soft CE, MixUp + smoothing 0.1",
            Config::SoftNceMixup => "soft InfoNCE, MixUp + smoothing 0.1",
        }
    }

    /// A short identifier (for CSV output).
    pub fn key(self) -> &'static str {
        match self {
            Config::Bayes => "bayes",
            Config::HardCe => "hard_ce",
            Config::HardNcePrior => "hard_nce_prior",
            Config::HardNceUniform => "hard_nce_uniform",
            Config::SoftCeSmooth => "soft_ce_smooth",
            Config::SoftNceSmooth => "soft_nce_smooth",
            Config::SoftCeMixup => "soft_ce_mixup",
            Config::SoftNceMixup => "soft_nce_mixup",
        }
    }

    fn mixup(self) -> bool {
        matches!(self, Config::SoftCeMixup | Config::SoftNceMixup)
    }
}

/// Test-set scores of one configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Which classifier.
    pub config: Config,
    /// Fraction of test points whose arg-max class is the label.
    pub acc: f64,
    /// Mean `−log q(y | x)` of the test labels.
    pub nll: f64,
    /// Expected calibration error of the top label, 15 equal-width bins.
    pub ece: f64,
    /// Mean `KL(p(·|x) ‖ q(·|x))` between the true posterior and the model.
    pub kl: f64,
    /// Time spent inside softnce's loss calls (`None` for the Bayes row).
    pub loss_time: Option<Duration>,
}

/// What a run returns.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One row per [`Config::ALL`] entry, in that order.
    pub rows: Vec<Row>,
    /// Test accuracy of the Bayes classifier that assumes a uniform prior (what InfoNCE with
    /// uniform `η` is consistent for).
    pub uniform_prior_bayes_acc: f64,
}

impl Outcome {
    /// The row of `config`.
    pub fn row(&self, config: Config) -> &Row {
        self.rows
            .iter()
            .find(|r| r.config == config)
            .expect("every configuration has a row")
    }
}

/// Runs the experiment: draws the data, trains one model per configuration (in parallel) and
/// scores them. `progress(config, epochs_done)` is called after every epoch of every model,
/// from whichever thread trains it.
///
/// # Errors
/// Any error of a softnce call (none is expected: every input is valid by construction).
pub fn run(settings: &Settings, progress: &(dyn Fn(Config, usize) + Sync)) -> softnce::Result<Outcome> {
    let mut rng = Rng::new(settings.seed);
    let mixture = Mixture::new(&mut rng);
    let train = mixture.sample(settings.n_train, &mut rng);
    let test = mixture.sample(settings.n_test, &mut rng);

    let mut counts = [0usize; CLASSES];
    for &y in &train.y {
        counts[y as usize] += 1;
    }
    // A class absent from a (tiny) training set would make η zero, which InfoNCE rejects.
    let empirical_prior: Vec<f32> = counts
        .iter()
        .map(|&k| (k.max(1) as f64 / settings.n_train as f64) as f32)
        .collect();

    // The true posterior of every test point, in log space.
    let log_post: Vec<f64> = (0..test.n)
        .flat_map(|i| mixture.log_posterior(test.row(i), &mixture.log_prior))
        .collect();
    let uniform_log_prior = vec![-(CLASSES as f64).ln(); CLASSES];
    let uniform_prior_bayes_acc = (0..test.n)
        .filter(|&i| argmax(&mixture.log_posterior(test.row(i), &uniform_log_prior)) == test.y[i] as usize)
        .count() as f64
        / test.n as f64;

    let trained = Config::ALL[1..]
        .par_iter()
        .map(|&config| {
            let (model, loss_time) = train_model(config, settings, &train, &empirical_prior, progress)?;
            let logits = model.forward_all(&test);
            let log_q: Vec<f64> = logits.chunks_exact(CLASSES).flat_map(log_softmax).collect();
            Ok(score(config, &log_q, &log_post, &test.y, Some(loss_time)))
        })
        .collect::<softnce::Result<Vec<Row>>>()?;

    let mut rows = vec![score(Config::Bayes, &log_post, &log_post, &test.y, None)];
    rows.extend(trained);
    Ok(Outcome {
        rows,
        uniform_prior_bayes_acc,
    })
}

/// The class prior `π_k ∝ PRIOR_RATIO^(−k/(C−1))` the data is drawn from.
pub fn class_prior() -> Vec<f64> {
    let weights: Vec<f64> = (0..CLASSES)
        .map(|k| PRIOR_RATIO.powf(-(k as f64) / (CLASSES - 1) as f64))
        .collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// `n` points: inputs row-major `n × DIM`, labels.
struct Dataset {
    n: usize,
    x: Vec<f32>,
    y: Vec<u32>,
}

impl Dataset {
    fn row(&self, i: usize) -> &[f32] {
        &self.x[i * DIM..(i + 1) * DIM]
    }
}

/// The generating distribution: `y ~ π`, `x | y ~ N(μ_y, I)`.
struct Mixture {
    /// `CLASSES × DIM`, row-major.
    means: Vec<f64>,
    log_prior: Vec<f64>,
}

impl Mixture {
    fn new(rng: &mut Rng) -> Self {
        // Orthonormal directions by Gram–Schmidt on Gaussian vectors, then scaled.
        let mut means = vec![0.0f64; CLASSES * DIM];
        for k in 0..CLASSES {
            let mut v: Vec<f64> = (0..DIM).map(|_| rng.normal()).collect();
            for j in 0..k {
                let u = &means[j * DIM..(j + 1) * DIM];
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            means[k * DIM..(k + 1) * DIM]
                .iter_mut()
                .zip(&v)
                .for_each(|(m, a)| *m = a / norm);
        }
        means.iter_mut().for_each(|m| *m *= MEAN_RADIUS);

        let log_prior = class_prior().iter().map(|p| p.ln()).collect();
        Mixture { means, log_prior }
    }

    fn sample(&self, n: usize, rng: &mut Rng) -> Dataset {
        let prior: Vec<f64> = self.log_prior.iter().map(|l| l.exp()).collect();
        let mut x = Vec::with_capacity(n * DIM);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let k = rng.categorical(&prior);
            y.push(k as u32);
            x.extend((0..DIM).map(|d| (self.means[k * DIM + d] + rng.normal()) as f32));
        }
        Dataset { n, x, y }
    }

    /// `log p(k | x)` for every class `k` under the class prior `log_prior`.
    fn log_posterior(&self, x: &[f32], log_prior: &[f64]) -> Vec<f64> {
        let joint: Vec<f64> = (0..CLASSES)
            .map(|k| {
                let mu = &self.means[k * DIM..(k + 1) * DIM];
                let sq: f64 = x.iter().zip(mu).map(|(&a, b)| (a as f64 - b).powi(2)).sum();
                log_prior[k] - 0.5 * sq
            })
            .collect();
        log_softmax(&joint)
    }
}

// ---------------------------------------------------------------------------------------------
// Model and training
// ---------------------------------------------------------------------------------------------

/// The MLP `z = W2ᵀ relu(W1ᵀ x + b1) + b2`; weights row-major `DIM × HIDDEN`, `HIDDEN × CLASSES`.
#[derive(Clone)]
struct Mlp {
    /// `[W1, b1, W2, b2]`.
    params: [Vec<f32>; 4],
}

const W1: usize = 0;
const B1: usize = 1;
const W2: usize = 2;
const B2: usize = 3;

impl Mlp {
    /// He-initialised weights, zero biases.
    fn new(rng: &mut Rng) -> Self {
        let mut init = |fan_in: usize, len: usize| -> Vec<f32> {
            let s = (2.0 / fan_in as f64).sqrt();
            (0..len).map(|_| (s * rng.normal()) as f32).collect()
        };
        let w1 = init(DIM, DIM * HIDDEN);
        let w2 = init(HIDDEN, HIDDEN * CLASSES);
        Mlp {
            params: [w1, vec![0.0; HIDDEN], w2, vec![0.0; CLASSES]],
        }
    }

    /// Hidden activations (after ReLU) and logits of the `n` rows of `x`.
    fn forward(&self, x: &[f32], n: usize, h: &mut Vec<f32>, z: &mut Vec<f32>) {
        h.clear();
        (0..n).for_each(|_| h.extend_from_slice(&self.params[B1]));
        gemm(Op::new(x, n, DIM), Op::new(&self.params[W1], DIM, HIDDEN), 1.0, h);
        h.iter_mut().for_each(|v| *v = v.max(0.0));
        z.clear();
        (0..n).for_each(|_| z.extend_from_slice(&self.params[B2]));
        gemm(
            Op::new(h, n, HIDDEN),
            Op::new(&self.params[W2], HIDDEN, CLASSES),
            1.0,
            z,
        );
    }

    fn forward_all(&self, data: &Dataset) -> Vec<f32> {
        let (mut h, mut z) = (Vec::new(), Vec::new());
        self.forward(&data.x, data.n, &mut h, &mut z);
        z
    }

    /// Gradients of the parameters from the logits' gradient `dz` (`n × CLASSES`) of the
    /// batch `x` whose hidden activations are `h`; `dh` is scratch.
    fn backward(
        &self,
        x: &[f32],
        h: &[f32],
        dz: &[f32],
        n: usize,
        dh: &mut [f32],
        grads: &mut [Vec<f32>; 4],
    ) {
        gemm(
            Op::new(h, n, HIDDEN).t(),
            Op::new(dz, n, CLASSES),
            0.0,
            &mut grads[W2],
        );
        column_sums(dz, CLASSES, &mut grads[B2]);
        gemm(
            Op::new(dz, n, CLASSES),
            Op::new(&self.params[W2], HIDDEN, CLASSES).t(),
            0.0,
            dh,
        );
        dh.iter_mut().zip(h).for_each(|(d, &a)| {
            if a <= 0.0 {
                *d = 0.0;
            }
        });
        gemm(
            Op::new(x, n, DIM).t(),
            Op::new(dh, n, HIDDEN),
            0.0,
            &mut grads[W1],
        );
        column_sums(dh, HIDDEN, &mut grads[B1]);
    }
}

/// Adam (Kingma & Ba) with bias correction.
struct Adam {
    m: [Vec<f32>; 4],
    v: [Vec<f32>; 4],
    t: i32,
}

impl Adam {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    fn new(model: &Mlp) -> Self {
        let zeros = |p: &Vec<f32>| vec![0.0f32; p.len()];
        Adam {
            m: model.params.each_ref().map(zeros),
            v: model.params.each_ref().map(zeros),
            t: 0,
        }
    }

    fn step(&mut self, model: &mut Mlp, grads: &[Vec<f32>; 4], lr: f32) {
        self.t += 1;
        let c1 = 1.0 - Self::BETA1.powi(self.t);
        let c2 = 1.0 - Self::BETA2.powi(self.t);
        let tensors = model
            .params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()));
        for ((params, grads), (ms, vs)) in tensors {
            let it = params.iter_mut().zip(grads).zip(ms.iter_mut().zip(vs.iter_mut()));
            for ((p, &g), (m, v)) in it {
                *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
                *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
                *p -= lr * (*m / c1) / ((*v / c2).sqrt() + Self::EPS);
            }
        }
    }
}

/// Trains one model; returns it and the time spent inside softnce.
fn train_model(
    config: Config,
    settings: &Settings,
    train: &Dataset,
    prior: &[f32],
    progress: &(dyn Fn(Config, usize) + Sync),
) -> softnce::Result<(Mlp, Duration)> {
    // Separate streams so that every configuration starts from the same weights and sees the
    // same batches, and the MixUp configurations draw the same λs.
    let mut init_rng = Rng::new(settings.seed ^ 0x1417);
    let mut order_rng = Rng::new(settings.seed ^ 0x0dde);
    let mut mixup_rng = Rng::new(settings.seed ^ 0x3e1f);

    let mut model = Mlp::new(&mut init_rng);
    let mut adam = Adam::new(&model);
    let mut grads = model.params.each_ref().map(|p| vec![0.0f32; p.len()]);
    let (mut h, mut z) = (Vec::new(), Vec::new());
    let mut dz = vec![0.0f32; BATCH * CLASSES];
    let mut dh = vec![0.0f32; BATCH * HIDDEN];
    let mut xb = vec![0.0f32; BATCH * DIM];
    let mut clean = vec![0.0f32; BATCH * DIM];
    let mut labels = vec![0u32; BATCH];
    let mut partner = vec![0u32; BATCH];
    let mut order: Vec<usize> = (0..train.n).collect();
    let mut in_loss = Duration::ZERO;

    let batches = train.n / BATCH; // the last partial batch is dropped
    let total_steps = (settings.epochs * batches).max(1);
    let mut step = 0;
    for epoch in 0..settings.epochs {
        order_rng.shuffle(&mut order);
        for batch in order.chunks_exact(BATCH) {
            for (r, &i) in batch.iter().enumerate() {
                clean[r * DIM..(r + 1) * DIM].copy_from_slice(train.row(i));
                labels[r] = train.y[i];
            }
            // MixUp with the reversed batch: x_i ← λ x_i + (1 − λ) x_{N−1−i}.
            let lambda = if config.mixup() && mixup_rng.uniform() < MIXUP_RATE {
                let lam = mixup_rng.beta(MIXUP_ALPHA, MIXUP_ALPHA) as f32;
                for r in 0..BATCH {
                    let p = BATCH - 1 - r;
                    for d in 0..DIM {
                        xb[r * DIM + d] = lam * clean[r * DIM + d] + (1.0 - lam) * clean[p * DIM + d];
                    }
                    partner[r] = labels[p];
                }
                Some(lam)
            } else {
                xb.copy_from_slice(&clean);
                None
            };

            model.forward(&xb, BATCH, &mut h, &mut z);
            let start = Instant::now();
            crate_loss(config, &z, &labels, &partner, lambda, prior, &mut dz)?;
            in_loss += start.elapsed();
            model.backward(&xb, &h, &dz, BATCH, &mut dh, &mut grads);

            // Constant step size for the first half, then linear decay to zero.
            let frac = step as f32 / total_steps as f32;
            let lr = settings.lr * (2.0 * (1.0 - frac)).min(1.0);
            adam.step(&mut model, &grads, lr);
            step += 1;
        }
        progress(config, epoch + 1);
    }
    Ok((model, in_loss))
}

/// The configuration's loss on the batch logits `z`; the mean-reduced gradient goes to `dz`.
fn crate_loss(
    config: Config,
    z: &[f32],
    labels: &[u32],
    partner: &[u32],
    lambda: Option<f32>,
    prior: &[f32],
    dz: &mut [f32],
) -> softnce::Result<f32> {
    let n = labels.len();
    let logits = MatRef::new(z, n, CLASSES)?;
    let grad = MatMut::new(dz, n, CLASSES)?;
    let smoothed = match lambda {
        Some(lam) => Targets::mixed(labels, partner, RowParam::Batch(lam), SMOOTHING),
        None => Targets::hard(labels, SMOOTHING),
    };
    let nce_prior = SoftInfoNce::new().noise(Noise::Probs(prior));
    match config {
        Config::Bayes => unreachable!("the Bayes row is not trained"),
        Config::HardCe => HardCrossEntropy::new().loss_and_grad(logits, labels, grad),
        Config::HardNcePrior => nce_prior.loss_and_grad(logits, &Targets::hard(labels, 0.0), grad),
        Config::HardNceUniform => SoftInfoNce::new().loss_and_grad(logits, &Targets::hard(labels, 0.0), grad),
        Config::SoftCeSmooth | Config::SoftCeMixup => {
            SoftCrossEntropy::new().loss_and_grad(logits, &smoothed, grad)
        }
        Config::SoftNceSmooth | Config::SoftNceMixup => nce_prior.loss_and_grad(logits, &smoothed, grad),
    }
}

// ---------------------------------------------------------------------------------------------
// Scores
// ---------------------------------------------------------------------------------------------

/// Scores the predictive log-probabilities `log_q` (`n × CLASSES`) against the true log
/// posterior and the labels.
fn score(config: Config, log_q: &[f64], log_p: &[f64], y: &[u32], loss_time: Option<Duration>) -> Row {
    let n = y.len();
    let (mut correct, mut nll, mut kl) = (0usize, 0.0f64, 0.0f64);
    let mut bins = [(0usize, 0.0f64); ECE_BINS]; // (correct, sum of confidence) per bin
    for (i, &label) in y.iter().enumerate() {
        let q = &log_q[i * CLASSES..(i + 1) * CLASSES];
        let p = &log_p[i * CLASSES..(i + 1) * CLASSES];
        let top = argmax(q);
        let hit = top == label as usize;
        correct += hit as usize;
        nll -= q[label as usize];
        kl += p
            .iter()
            .zip(q)
            .map(|(&lp, &lq)| lp.exp() * (lp - lq))
            .sum::<f64>();
        let conf = q[top].exp();
        let bin = ((conf * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        bins[bin].0 += hit as usize;
        bins[bin].1 += conf;
    }
    // Σ_b (n_b / n)·|accuracy_b − confidence_b| = Σ_b |hits_b − Σ confidence_b| / n.
    let ece = bins
        .iter()
        .map(|&(hits, conf)| (hits as f64 - conf).abs())
        .sum::<f64>()
        / n as f64;
    Row {
        config,
        acc: correct as f64 / n as f64,
        nll: nll / n as f64,
        ece,
        kl: kl / n as f64,
        loss_time,
    }
}

fn log_softmax<T: Copy + Into<f64>>(z: &[T]) -> Vec<f64> {
    let max = z.iter().map(|&v| v.into()).fold(f64::NEG_INFINITY, f64::max);
    let lse = max + z.iter().map(|&v| (v.into() - max).exp()).sum::<f64>().ln();
    z.iter().map(|&v| v.into() - lse).collect()
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, k| if v[k] > v[best] { k } else { best })
}

fn column_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in m.chunks_exact(cols) {
        out.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix products
// ---------------------------------------------------------------------------------------------

/// An operand of [`gemm`]: a row-major `rows × cols` matrix, used as is or transposed.
#[derive(Clone, Copy)]
struct Op<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a> Op<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "operand length vs shape");
        Op {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    fn t(self) -> Self {
        Op {
            transposed: !self.transposed,
            ..self
        }
    }

    /// Shape as used, and the row and column strides of that use.
    fn layout(&self) -> (usize, usize, isize, isize) {
        let stride = self.cols as isize;
        if self.transposed {
            (self.cols, self.rows, 1, stride)
        } else {
            (self.rows, self.cols, stride, 1)
        }
    }
}

/// `C ← A·B + beta·C` with `C` row-major (`matrixmultiply::sgemm`, single-threaded).
fn gemm(a: Op<'_>, b: Op<'_>, beta: f32, c: &mut [f32]) {
    let (m, k, rsa, csa) = a.layout();
    let (k2, n, rsb, csb) = b.layout();
    assert_eq!(k, k2, "inner dimensions");
    assert_eq!(c.len(), m * n, "output length vs shape");
    // SAFETY: `Op::new` checked `data.len() == rows·cols`, so every element sgemm reads,
    // `(i, j) ↦ i·rs + j·cs` for `i < m, j < k` (resp. `k × n`), lies in its slice; `c` holds
    // exactly the `m × n` row-major elements sgemm writes and, being `&mut`, aliases neither
    // input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            rsa,
            csa,
            b.data.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea & Flood 2014) with Box–Muller normals: small, deterministic and
/// good enough for a demo.
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform on `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller; the second value of each pair is kept for the next call).
    pub fn normal(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]: the logarithm stays finite
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }

    /// `Beta(a, b)` for `a, b ≤ 1` by Jöhnk's rejection method.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        loop {
            let x = self.uniform().powf(1.0 / a);
            let y = self.uniform().powf(1.0 / b);
            if x + y <= 1.0 && x + y > 0.0 {
                return x / (x + y);
            }
        }
    }

    /// An index drawn with probabilities `p` (summing to 1).
    fn categorical(&mut self, p: &[f64]) -> usize {
        let mut u = self.uniform();
        for (k, &pk) in p.iter().enumerate() {
            if u < pk {
                return k;
            }
            u -= pk;
        }
        p.len() - 1
    }

    /// Fisher–Yates shuffle.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = ((self.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
            v.swap(i, j);
        }
    }
}
