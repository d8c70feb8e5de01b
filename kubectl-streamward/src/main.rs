//! `kubectl streamward`: the commands people run around Streamward. kubectl finds the binary
//! `kubectl-streamward` on PATH and runs it for `kubectl streamward ...`.
//!
//! Exit codes: 0 success; 1 a check failed (a policy case, an access change under
//! `--exit-code`) or the API server or collector refused; 2 bad input (flags, files).

mod audit;
mod cluster;
mod collector;
mod contain;
mod evidence;
mod policy;
mod replay;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use jiff::Timestamp;

use policy::BadInput;
use policy::folder::Folder;

#[derive(Parser)]
#[command(
    name = "kubectl streamward",
    bin_name = "kubectl streamward",
    version,
    about = "Streamward from kubectl: test and diff policies, approve, grant, contain, query the audit trail, evidence for auditors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offline checks of a folder of Streamward resources (no cluster needed).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Approve an ApprovalRequest (or, as `accessgrant/NAME`, an AccessGrant).
    Approve(cluster::DecideArgs),
    /// Deny an ApprovalRequest (or, as `accessgrant/NAME`, an AccessGrant).
    Deny(cluster::DecideArgs),
    /// Create a just-in-time AccessGrant.
    Grant(Box<cluster::GrantArgs>),
    /// Incident response: deny an identity everything and revoke its AccessGrants.
    Contain(Box<contain::ContainArgs>),
    /// Lift a containment (the grants it revoked stay revoked).
    Release(contain::IdentityArgs),
    /// Query the audit trail from the collector.
    Audit(Box<audit::AuditArgs>),
    /// A report for an auditor: per NIST SP 800-53 / SOC 2 control, what the audit trail holds
    /// for a period, and its chain verification (evidence.json and evidence.html).
    Evidence(Box<evidence::EvidenceArgs>),
    /// The operator's and the collector's readiness, and each workload's config hash.
    Status(status::StatusArgs),
    /// One client session request by request, with the records it read or wrote checked
    /// against Kafka (exit 1 when one differs).
    Replay(Box<replay::ReplayArgs>),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Compile the YAML of DIR as the operator does and check it against a table of cases:
    /// exit 0 when every case passes, 1 (with what differs) when one does not, 2 on bad input.
    Test(TestArgs),
    /// List which identities gain or lose which access from folder OLD to folder NEW.
    Diff(DiffArgs),
}

#[derive(Args)]
struct TestArgs {
    /// The folder of StreamTarget, StreamPolicy, AccessGrant, MaskingRule (and Secret) YAML.
    dir: PathBuf,
    /// The cases file (see docs/kubectl-plugin.md).
    #[arg(long)]
    cases: PathBuf,
}

#[derive(Args)]
struct DiffArgs {
    /// The folder as it is.
    old: PathBuf,
    /// The folder as it would be.
    new: PathBuf,
    /// The namespace of objects that name none.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Exit 1 when some access changes (as `git diff --exit-code`).
    #[arg(long)]
    exit_code: bool,
}

/// How a command ended when it did not succeed.
enum Failure {
    /// A check did not pass: exit 1 (the report is already printed).
    Checks,
    /// Bad input: exit 2.
    BadInput(String),
    /// Anything else (the API server or the collector refused, a network error): exit 1.
    Other(anyhow::Error),
}

impl From<BadInput> for Failure {
    fn from(e: BadInput) -> Self {
        Failure::BadInput(e.0)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<BadInput>() {
            Ok(bad) => Failure::BadInput(bad.0),
            Err(e) => Failure::Other(e),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Policy(PolicyCommand::Test(args)) => policy_test(&args),
        Command::Policy(PolicyCommand::Diff(args)) => policy_diff(&args),
        Command::Approve(args) => run_async(cluster::decide(args, true)),
        Command::Deny(args) => run_async(cluster::decide(args, false)),
        Command::Grant(args) => run_async(cluster::grant(*args)),
        Command::Contain(args) => run_async(contain::contain(*args)),
        Command::Release(args) => run_async(contain::release(args)),
        Command::Audit(args) => run_async(audit::run(*args)),
        Command::Evidence(args) => run_async(evidence::run(*args)),
        Command::Status(args) => run_async(status::run(args)),
        Command::Replay(args) => match run_async(replay::run(*args)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Checks),
            Err(failure) => Err(failure),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Checks) => ExitCode::from(1),
        Err(Failure::BadInput(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Other(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run_async<T>(
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Result<T, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.into()))?;
    Ok(runtime.block_on(future)?)
}

fn policy_test(args: &TestArgs) -> Result<(), Failure> {
    let cases = policy::cases::read(&args.cases)?;
    let now = Timestamp::now();
    let mut folder = Folder::read(&args.dir, now)?;
    let report = policy::cases::run(&mut folder, &cases, now)?;
    print!("{}", report.render());
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::Checks)
    }
}

fn policy_diff(args: &DiffArgs) -> Result<(), Failure> {
    let now = Timestamp::now();
    let mut old = Folder::read(&args.old, now)?;
    let mut new = Folder::read(&args.new, now)?;
    let changes = policy::diff::changes(&mut old, &mut new, &args.namespace, now)?;
    print!(
        "{}",
        policy::diff::render(
            &changes,
            &args.old.display().to_string(),
            &args.new.display().to_string()
        )
    );
    if args.exit_code && !changes.is_empty() {
        Err(Failure::Checks)
    } else {
        Ok(())
    }
}
