//! The refresh tuner on real processes, in a world it cannot see.
//!
//! The test owns a world of customers. Each has a profile drawn from the
//! example data set's generator (`model-server/training/DATASET.md`). At any
//! moment about 30 % of them are compromised: three more chargebacks, a
//! riskier home country, and most of their payments made in risky sessions.
//! Each customer's state is redrawn at a rate the test sets. The world's
//! current profiles are the refresh job's source file, rewritten as they
//! change. A refresh loads a snapshot, and the gateway serves it until the
//! next one, so the longer the interval, the more served profiles are out of
//! date. Time runs fast here: a second of the test stands for hours.
//!
//! Payments are drawn from the generator for the customer's true profile.
//! Each is labelled by the data set's own rule (the logistic rule with its
//! noise) on the true values before the gateway answers, so a label never
//! depends on the model's score. Labels reach the feedback API 1–7 s after
//! their prediction, and the job declares an 8 s label delay.
//!
//! While the world changes slowly, the tuner lengthens the interval (up to
//! double). Then the test makes profiles change fast (a redraw every ~3 s).
//! The tuner reverts the lengthening, then shortens the interval it
//! believed good.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Beta, Distribution, Gamma, LogNormal, Normal, Poisson};
use rig::gateway::{DEV_AUTH, GatewayProcess, client_with_token, definitions, profile_csv};
use serde_json::{Value, json};

const JOB: &str = "customer_profile_daily";
const CUSTOMERS: usize = 1500;
/// Share of customers compromised at any moment.
const COMPROMISED_SHARE: f64 = 0.3;
/// How often a compromised customer's payment is a risky session (others:
/// the data set's 6 %, halved because compromised customers take the rest).
const RISKY_IF_COMPROMISED: f64 = 0.6;
const RISKY_OTHERWISE: f64 = 0.03;
/// Payments sent per second.
const PAYMENTS_PER_S: u64 = 80;
/// How often each customer's state is redrawn at first: a few customers a
/// second, so every refresh finds changes (an unchanged file writes no new
/// batch) but a 20 s interval serves about as well as fresh.
const SLOW_CHANGE_PER_S: f64 = 0.002;
/// How often once the world moves fast: about every 3 s, so a 10 s interval
/// serves mostly outdated states.
const FAST_CHANGE_PER_S: f64 = 0.3;
/// The tuner's AUC threshold. With fresh profiles the example model scores
/// about 0.94 in this world, with profiles 10 s old under the fast change
/// about 0.84.
const THRESHOLD: f64 = 0.88;
/// The dynamic features as the gateway serves them: this world streams no
/// activity, so every customer has the view's defaults (`txn_count_1h`,
/// `txn_amount_sum_1h`, `distinct_merchants_24h`, `failed_auth_count_24h`,
/// `minutes_since_last_txn`), and the label rule sees the same values.
const ACTIVITY: [f64; 5] = [0.0, 0.0, 0.0, 0.0, 1440.0];
/// The data set's hour-of-day profile of ordinary payments.
const HOUR_WEIGHTS: [f64; 24] = [
    0.6, 0.4, 0.3, 0.25, 0.25, 0.4, 0.9, 1.8, 3.0, 3.8, 4.2, 4.6, 5.2, 5.0, 4.6, 4.5, 4.7, 5.2,
    5.6, 5.4, 4.6, 3.6, 2.4, 1.3,
];

/// The static features of one customer (`customer_profile`).
#[derive(Debug, Clone, Copy)]
struct Profile {
    account_age_days: f64,
    avg_txn_amount_30d: f64,
    txn_count_30d: f64,
    chargeback_count_1y: f64,
    home_country_risk: f64,
}

/// The request features of one payment.
#[derive(Debug, Clone, Copy)]
struct Payment {
    amount: f64,
    merchant_category_risk: f64,
    is_card_present: bool,
    hour_of_day: u32,
    distance_from_home_km: f64,
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// A draw of a distribution whose parameters are constants of this file.
fn draw<D: Distribution<f64>>(rng: &mut StdRng, d: Result<D, impl std::fmt::Debug>) -> f64 {
    d.map(|d| d.sample(rng))
        .unwrap_or_else(|e| panic!("bad distribution parameters: {e:?}"))
}

impl Profile {
    /// The data set's generator of a customer's static features.
    fn draw(rng: &mut StdRng) -> Self {
        let age = (draw(rng, Gamma::new(1.5, 500.0)).floor() + 1.0).clamp(1.0, 3650.0);
        let avg = round(
            draw(rng, LogNormal::new(45f64.ln(), 0.8)).clamp(2.0, 5000.0),
            2,
        );
        let activity = draw(rng, Gamma::new(2.0, 12.0)).max(1e-9);
        let count = draw(rng, Poisson::new(activity));
        let chargebacks = draw(
            rng,
            Poisson::new(0.06 + if age < 90.0 { 0.15 } else { 0.0 }),
        );
        let risk = round(draw(rng, Beta::new(2.0, 8.0)), 4);
        Profile {
            account_age_days: age,
            avg_txn_amount_30d: avg,
            txn_count_30d: count,
            chargeback_count_1y: chargebacks,
            home_country_risk: risk,
        }
    }

    /// The same customer while compromised.
    fn compromised(self) -> Self {
        Profile {
            chargeback_count_1y: self.chargeback_count_1y + 3.0,
            home_country_risk: round((self.home_country_risk + 0.6).min(1.0), 4),
            ..self
        }
    }

    fn csv_row(&self, customer: usize) -> String {
        format!(
            "c-{customer},{},{},{},{},{}",
            self.account_age_days,
            self.avg_txn_amount_30d,
            self.txn_count_30d,
            self.chargeback_count_1y,
            self.home_country_risk
        )
    }
}

impl Payment {
    /// The data set's generator of a payment's request features.
    fn draw(rng: &mut StdRng, profile: &Profile, risky: bool) -> Self {
        let factor = if risky {
            draw(rng, LogNormal::new(0.9, 0.9))
        } else {
            draw(rng, LogNormal::new(0.0, 0.6))
        };
        let amount = round(
            (profile.avg_txn_amount_30d * factor).clamp(0.5, 20_000.0),
            2,
        );
        let merchant = if risky {
            draw(rng, Beta::new(3.0, 4.0))
        } else {
            draw(rng, Beta::new(2.0, 7.0))
        };
        let present = rng.random_bool(if risky { 0.2 } else { 0.62 });
        let hour = if risky {
            rng.random_range(0..24u32)
        } else {
            let total: f64 = HOUR_WEIGHTS.iter().sum();
            let mut at = rng.random::<f64>() * total;
            let mut hour = 23;
            for (h, w) in (0u32..).zip(HOUR_WEIGHTS) {
                if at < w {
                    hour = h;
                    break;
                }
                at -= w;
            }
            hour
        };
        let distance = if risky {
            draw(rng, LogNormal::new(250f64.ln(), 1.5))
        } else if present {
            draw(rng, LogNormal::new(6f64.ln(), 1.0))
        } else {
            draw(rng, LogNormal::new(25f64.ln(), 1.4))
        };
        Payment {
            amount,
            merchant_category_risk: round(merchant, 4),
            is_card_present: present,
            hour_of_day: hour,
            distance_from_home_km: round(distance.clamp(0.0, 20_000.0), 1),
        }
    }

    fn body(&self, customer: usize) -> Value {
        json!({"entity": {"customer_id": format!("c-{customer}")}, "request_features": {
            "amount": self.amount,
            "merchant_category_risk": self.merchant_category_risk,
            "is_card_present": self.is_card_present,
            "hour_of_day": self.hour_of_day,
            "distance_from_home_km": self.distance_from_home_km}})
    }
}

/// The data set's label rule (DATASET.md): a Bernoulli draw of the logistic
/// of the rule's score plus its Normal(0, 0.8) noise.
fn is_fraud(rng: &mut StdRng, p: &Profile, pay: &Payment) -> bool {
    let [count_1h, sum_1h, merchants_24h, failed_24h, minutes_since] = ACTIVITY;
    let ratio = pay.amount / p.avg_txn_amount_30d;
    let cnp = if pay.is_card_present { 0.0 } else { 1.0 };
    let night = f64::from(u8::from(pay.hour_of_day <= 5));
    let flag = |b: bool| f64::from(u8::from(b));
    let z = -7.5
        + 0.9 * ratio.ln().max(0.0)
        + 0.35 * count_1h
        + 0.4 * (sum_1h / p.avg_txn_amount_30d).ln_1p()
        + 0.12 * merchants_24h
        + 0.55 * failed_24h
        + 0.6 * flag(minutes_since < 5.0)
        + 2.2 * pay.merchant_category_risk
        + 1.5 * p.home_country_risk
        + 0.7 * p.chargeback_count_1y
        + 0.8 * flag(p.account_age_days < 30.0)
        - 0.25 * (p.account_age_days / 30.0).ln_1p()
        + 0.3 * pay.distance_from_home_km.ln_1p()
        + 1.4 * cnp * night
        + 1.0 * cnp * flag(pay.distance_from_home_km > 500.0)
        + 0.8 * flag(ratio > 3.0) * flag(count_1h >= 3.0)
        + 0.5 * cnp
        + draw(rng, Normal::new(0.0, 0.8));
    rng.random_bool(1.0 / (1.0 + (-z).exp()))
}

/// One payment to send and its label.
struct Drawn {
    customer: usize,
    payment: Payment,
    fraud: bool,
    /// How long after the answer the label is known.
    label_after: Duration,
}

struct Customer {
    base: Profile,
    compromised: bool,
}

/// The true state of every customer, which only the test sees.
struct World {
    customers: Vec<Customer>,
    /// Redraws of each customer's state per second.
    change_per_s: f64,
    rng: StdRng,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let customers = (0..CUSTOMERS)
            .map(|_| Customer {
                base: Profile::draw(&mut rng),
                compromised: rng.random_bool(COMPROMISED_SHARE),
            })
            .collect();
        World {
            customers,
            change_per_s: SLOW_CHANGE_PER_S,
            rng,
        }
    }

    fn profile(&self, customer: usize) -> Profile {
        let c = &self.customers[customer];
        if c.compromised {
            c.base.compromised()
        } else {
            c.base
        }
    }

    /// Lets `dt` pass: each customer's state is redrawn with the chance a
    /// Poisson process of rate `change_per_s` fires in `dt`.
    fn step(&mut self, dt: Duration) {
        let p = 1.0 - (-self.change_per_s * dt.as_secs_f64()).exp();
        if p <= 0.0 {
            return;
        }
        for c in &mut self.customers {
            if self.rng.random_bool(p.min(1.0)) {
                c.compromised = self.rng.random_bool(COMPROMISED_SHARE);
            }
        }
    }

    /// The source file's contents: every customer's true profile now.
    fn csv(&self) -> String {
        profile_csv((0..CUSTOMERS).map(|k| self.profile(k).csv_row(k)))
    }

    /// A payment of a random customer, labelled by the rule on the truth
    /// now.
    fn payment(&mut self) -> Drawn {
        let k = self.rng.random_range(0..CUSTOMERS);
        let profile = self.profile(k);
        let risky = self.rng.random_bool(if self.customers[k].compromised {
            RISKY_IF_COMPROMISED
        } else {
            RISKY_OTHERWISE
        });
        let pay = Payment::draw(&mut self.rng, &profile, risky);
        let fraud = is_fraud(&mut self.rng, &profile, &pay);
        Drawn {
            customer: k,
            payment: pay,
            fraud,
            label_after: Duration::from_millis(self.rng.random_range(1000..7000)),
        }
    }
}

/// The example definitions with the example `[[refresh_job]]` replaced by
/// one that loads the world's file every 10 s, judged on 20 s windows of
/// labels that mature 8 s after their window.
fn definitions_with_job() -> Result<String> {
    rig::gateway::definitions_with_refresh_job(&format!(
        r#"[[refresh_job]]
name = "{JOB}"
script_version = "world-v1"
interval = "10s"
timeout = "1m"
[refresh_job.source]
file = "profile.csv"
[refresh_job.tuner]
model = "fraud_detector"
metric = "auc"
positive_label = "fraud"
threshold = {THRESHOLD}
min_interval = "5s"
max_interval = "2m"
good_windows = 2
cooldown_windows = 1
min_samples = 600
window = "20s"
label_delay = "8s"
"#
    ))
}

/// Writes `text` to `path` whole (a reader never sees half a file).
fn replace_file(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("csv.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The guard of `m`, even if a task panicked while holding it (the test
/// fails on that panic anyway).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct Traffic {
    predicted: AtomicU64,
    labelled: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl Traffic {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        lock(&self.first_failure).get_or_insert(what);
    }
}

/// Sends one payment (holding `permit` until it is answered); after its
/// delay, its label.
async fn predict_then_label(
    permit: tokio::sync::OwnedSemaphorePermit,
    http: reqwest::Client,
    base: String,
    drawn: Drawn,
    traffic: Arc<Traffic>,
) {
    let answer = async {
        let r = http
            .post(format!("{base}/v1/models/fraud_detector/predict"))
            .json(&drawn.payment.body(drawn.customer))
            .send()
            .await?;
        let status = r.status().as_u16();
        let v: Value = r.json().await?;
        if status != 200 {
            bail!("predict: {status} {v}");
        }
        v["prediction_id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no prediction_id in {v}"))
    }
    .await;
    drop(permit);
    let id = match answer {
        Ok(id) => id,
        Err(e) => return traffic.fail(format!("{e:#}")),
    };
    traffic.predicted.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(drawn.label_after).await;
    let label = if drawn.fraud { "fraud" } else { "legit" };
    match http
        .post(format!("{base}/v1/feedback"))
        .json(&json!({"prediction_id": id, "label": label}))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {
            traffic.labelled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(r) => traffic.fail(format!("feedback: {}", r.status())),
        Err(e) => traffic.fail(format!("feedback: {e}")),
    }
}

/// The job's decisions since the first `seen` until one has `action`.
async fn next_decision(
    show: &impl AsyncFn() -> Result<Value>,
    action: &[&str],
    seen: usize,
    limit: Duration,
) -> Result<(usize, Value)> {
    let began = Instant::now();
    loop {
        let v = show().await?;
        let decisions = v["decisions"].as_array().cloned().unwrap_or_default();
        if let Some((i, d)) = decisions
            .iter()
            .enumerate()
            .skip(seen)
            .find(|(_, d)| action.iter().any(|a| d["action"] == *a))
        {
            return Ok((i, d.clone()));
        }
        if began.elapsed() > limit {
            let summary: Vec<String> = decisions
                .iter()
                .map(|d| format!("{} {}", d["action"], d["reason"]))
                .collect();
            bail!(
                "no {action:?} decision within {limit:?}; decisions:\n{}",
                summary.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn the_tuner_doubles_reverts_and_shortens_as_served_profiles_go_stale() -> Result<()> {
    let (dir, config) = rig::gateway::scratch("tuner_world", DEV_AUTH, |c| c).await?;
    let world = Arc::new(Mutex::new(World::new(20_240_611)));
    let source = dir.join("profile.csv");
    replace_file(&source, &lock(&world).csv())?;
    let defs = dir.join("features.toml");
    std::fs::write(&defs, definitions_with_job()?)?;
    let text = std::fs::read_to_string(&config)?.replace(
        &format!("definitions = \"{}\"", definitions().display()),
        &format!("definitions = \"{}\"", defs.display()),
    );
    assert!(text.contains("features.toml"), "{text}");
    std::fs::write(
        &config,
        format!(
            "{text}\n[scheduler]\nenabled = true\npoll = \"1s\"\n\
             [[auth.allow]]\napi = \"admin\"\ngroups = [\"fraud-team\"]\nscopes = [\"admin\"]\n"
        ),
    )?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let job_url = format!("{}/v1/admin/tuner/jobs/{JOB}", gw.http);
    let show = async || -> Result<Value> {
        let r = http.get(&job_url).send().await?;
        let status = r.status().as_u16();
        let v: Value = r.json().await?;
        if status != 200 {
            bail!("GET {job_url}: {status} {v}");
        }
        Ok(v)
    };

    // The world moves on its own clock; its file follows.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mover = {
        let (world, stop, source) = (world.clone(), stop.clone(), source.clone());
        tokio::spawn(async move {
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let csv = {
                    let mut w = lock(&world);
                    w.step(last.elapsed());
                    w.csv()
                };
                last = Instant::now();
                replace_file(&source, &csv)?;
            }
            anyhow::Ok(())
        })
    };

    // Payments at a steady pace; each label follows 1–7 s after its answer.
    let traffic = Arc::new(Traffic::default());
    let sender = {
        let (world, stop, traffic) = (world.clone(), stop.clone(), traffic.clone());
        let (http, base) = (http.clone(), gw.http.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PAYMENTS_PER_S));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(16));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let drawn = lock(&world).payment();
                let (http, base, traffic) = (http.clone(), base.clone(), traffic.clone());
                tokio::spawn(predict_then_label(permit, http, base, drawn, traffic));
            }
        })
    };

    let outcome = async {
        // 1. A slow world: the profiles served at 10 s are as good as
        // fresh, and the tuner lengthens the interval (doubles it, or less
        // where the metric by feature age expects double to miss).
        let limit = Duration::from_secs(150);
        let (at, grown) = next_decision(&show, &["doubled", "lengthened"], 0, limit).await?;
        eprintln!("grown: {grown}");
        assert_eq!(grown["from_s"].as_u64(), Some(10), "{grown}");
        let longer = grown["to_s"].as_u64().context("no to_s")?;
        assert!((11..=20).contains(&longer), "{grown}");
        let auc = grown["metric"].as_f64().context("no metric")?;
        assert!(auc >= THRESHOLD, "{grown}");
        assert!(grown["samples"].as_u64() >= Some(600), "{grown}");

        // 2. The world starts moving fast: at the longer interval most
        // served profiles are outdated, the AUC falls, and the tuner goes
        // back to the last good one.
        lock(&world).change_per_s = FAST_CHANGE_PER_S;
        let (at, reverted) = next_decision(&show, &["reverted"], at + 1, limit).await?;
        eprintln!("reverted: {reverted}");
        let back = reverted["to_s"].as_u64().context("no to_s")?;
        assert!(
            reverted["from_s"].as_u64() > Some(back) && back >= 10,
            "{reverted}"
        );
        assert!(reverted["metric"].as_f64() < Some(THRESHOLD), "{reverted}");

        // 3. That is not enough either in this world: once the rows served
        // at the longer interval are gone and a window served at the last
        // good one is judged, it is halved.
        let (_, shortened) = next_decision(&show, &["shortened"], at + 1, limit).await?;
        eprintln!("shortened: {shortened}");
        assert_eq!(
            (shortened["from_s"].as_u64(), shortened["to_s"].as_u64()),
            (Some(back), Some((back / 2).max(5))),
            "{shortened}"
        );
        assert!(
            shortened["metric"].as_f64() < Some(THRESHOLD),
            "{shortened}"
        );
        let state = show().await?;
        assert_eq!(
            state["interval_s"].as_u64(),
            shortened["to_s"].as_u64(),
            "{state}"
        );
        anyhow::Ok(())
    }
    .await;

    stop.store(true, Ordering::Relaxed);
    sender.await?;
    mover.await??;
    let (predicted, labelled, failed) = (
        traffic.predicted.load(Ordering::Relaxed),
        traffic.labelled.load(Ordering::Relaxed),
        traffic.failed.load(Ordering::Relaxed),
    );
    eprintln!("{predicted} predictions, {labelled} labels, {failed} failed calls");
    outcome?;
    let first = lock(&traffic.first_failure).clone();
    assert!(
        failed * 100 <= predicted,
        "{failed} failed calls of {predicted}; first: {first:?}"
    );
    gw.stop().await?;
    Ok(())
}
