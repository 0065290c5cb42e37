//! `nanovllm chat`: a conversation in the terminal.
//!
//! Each input line is a user message (or a command); the whole history goes
//! through the model's chat template every turn, and the reply streams to
//! stdout as it is generated, followed by a newline. Commands: `/reset`
//! (forget the conversation, keep the system message), `/system TEXT` (set
//! the system message; `/system` alone clears it), `/exit`, `/help`.
//!
//! At a terminal (stdin is one), lines are read with a line editor
//! (rustyline, on the controlling terminal, so stdout holds only the replies
//! even when redirected): arrow keys, Home/End, Ctrl-R and the other readline
//! keys edit the line, Up/Down walk the session's history (kept in memory only).
//! Ctrl-C while a reply is generated aborts that request in the engine, ends
//! the reply's line and drops the whole turn (the message and the partial
//! reply) from the conversation, as a failed turn is; Up then brings the
//! message back. At the prompt, Ctrl-C clears the line and prints a hint; a
//! second Ctrl-C in a row, or Ctrl-D on an empty line, exits with code 0.
//!
//! When stdin is not a terminal (a script pipes lines in), no prompt or
//! notice is printed on stdout: it holds exactly the replies, one per user
//! line, each followed by "\n". Notices and errors go to stderr, Ctrl-C keeps
//! its default (it ends the program). A turn that fails (e.g. the history
//! outgrew the context) is reported and dropped; the exit code is then 1.

use std::io::{BufRead, IsTerminal, StdinLock, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use nanovllm_core::{
    ChatMessage, ChatTemplate, IncrementalDetokenizer, LLMEngine, Prompt, SamplingParams, Tokenizer,
};
use rustyline::error::ReadlineError;
use rustyline::{Behavior, Config, DefaultEditor};
use serde_json::{Map, Value as Json};

use crate::args::ChatArgs;
use crate::requests::params_from_flags;

const HELP: &str = "commands: /reset (new conversation), /system TEXT (set the system message; /system alone clears it), /exit";

/// What a first Ctrl-C at the prompt prints.
const EXIT_HINT: &str = "(press Ctrl-C again or Ctrl-D to exit, or type /exit)";

/// The prompt shown at a terminal.
const PROMPT: &str = ">>> ";

/// A line of input, understood.
#[derive(Debug, PartialEq, Eq)]
enum Input<'a> {
    Message(&'a str),
    Reset,
    System(Option<&'a str>),
    Exit,
    Help,
    Unknown(&'a str),
    Empty,
}

fn parse_input(line: &str) -> Input<'_> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() {
        return Input::Empty;
    }
    if !line.starts_with('/') {
        return Input::Message(line);
    }
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    match command {
        "/exit" | "/quit" => Input::Exit,
        "/reset" | "/clear" => Input::Reset,
        "/system" => Input::System((!rest.is_empty()).then_some(rest)),
        "/help" => Input::Help,
        other => Input::Unknown(other),
    }
}

/// The conversation: an optional system message, then alternating turns.
#[derive(Debug, Default)]
struct History {
    system: Option<String>,
    turns: Vec<ChatMessage>,
}

impl History {
    fn messages(&self) -> Vec<ChatMessage> {
        self.system
            .iter()
            .map(|s| ChatMessage::system(s.clone()))
            .chain(self.turns.iter().cloned())
            .collect()
    }
}

pub fn run(args: ChatArgs, verbosity: crate::logging::Verbosity) -> anyhow::Result<bool> {
    let config = args.engine.to_engine_config()?;
    let tokenizer_dir = config
        .tokenizer
        .clone()
        .unwrap_or_else(|| config.model_dir());
    let template = match &args.chat_template {
        Some(file) => ChatTemplate::from_file(file, &tokenizer_dir)?,
        None => ChatTemplate::from_tokenizer_dir(&tokenizer_dir)?.with_context(|| {
            format!(
                "{} has no chat template (tokenizer_config.json or chat_template.jinja): pass --chat-template FILE",
                tokenizer_dir.display()
            )
        })?,
    };
    let kwargs = parse_kwargs(args.chat_template_kwargs.as_deref())?;
    let mut engine = crate::load_progress::build_engine(config, verbosity)?;
    // One copy for detokenizing while the engine is borrowed mutably.
    let tokenizer = engine.tokenizer().cloned().context(
        "chat needs a tokenizer: the model directory has no tokenizer.json; pass --tokenizer DIR",
    )?;
    let params = params_from_flags(&engine.default_sampling_params(), &args.sampling);
    params.validate().context("invalid sampling flags")?;
    // Without a flag or generation-config limit, a reply may use all the context left.
    let max_tokens = args
        .sampling
        .max_tokens
        .or(engine.generation_config().max_new_tokens);

    let interactive = std::io::stdin().is_terminal();
    let mut source = if interactive {
        eprintln!("nanovllm chat: {HELP}");
        LineSource::terminal()?
    } else {
        LineSource::Piped(std::io::stdin().lock())
    };
    let mut history = History {
        system: args.system.clone(),
        turns: Vec::new(),
    };
    let mut all_ok = true;
    let mut stdout = std::io::stdout().lock();
    let mut interrupts_in_a_row = 0;
    loop {
        let line = match source.read()? {
            Read::Eof => break,
            Read::Interrupted => {
                interrupts_in_a_row += 1;
                if interrupts_in_a_row >= 2 {
                    break;
                }
                eprintln!("{EXIT_HINT}");
                continue;
            }
            Read::Line(line) => line,
        };
        interrupts_in_a_row = 0;
        match parse_input(&line) {
            Input::Empty => {}
            Input::Exit => break,
            Input::Help => eprintln!("{HELP}"),
            Input::Unknown(command) => eprintln!("unknown command {command}; {HELP}"),
            Input::Reset => {
                history.turns.clear();
                notice(interactive, "(new conversation)");
            }
            Input::System(text) => {
                history.system = text.map(str::to_string);
                notice(
                    interactive,
                    match text {
                        Some(_) => "(system message set)",
                        None => "(system message cleared)",
                    },
                );
            }
            Input::Message(text) => {
                history.turns.push(ChatMessage::user(text));
                let turn = Turn {
                    tokenizer: &tokenizer,
                    template: &template,
                    kwargs: &kwargs,
                    params: &params,
                    max_tokens,
                    interrupt: source.interrupt(),
                };
                match turn.reply(&mut engine, &history.messages(), &mut stdout) {
                    Ok(Reply::Done(reply)) => history.turns.push(ChatMessage::assistant(reply)),
                    Ok(Reply::Interrupted) => {
                        history.turns.pop();
                        eprintln!(
                            "(interrupted: this turn is not kept; Up brings the message back)"
                        );
                    }
                    Err(e) => {
                        history.turns.pop();
                        all_ok = false;
                        eprintln!("error: {e:#}");
                    }
                }
            }
        }
    }
    Ok(all_ok)
}

/// Where input lines come from.
enum LineSource {
    /// A terminal: a line editor with history, and the flag that a Ctrl-C outside the
    /// editor (while a reply is generated) sets.
    Terminal {
        // Boxed: the editor is far larger than the pipe's lock.
        editor: Box<DefaultEditor>,
        interrupt: Arc<AtomicBool>,
    },
    /// A pipe or file: plain lines, no editing, Ctrl-C left at its default.
    Piped(StdinLock<'static>),
}

/// One read from a [`LineSource`].
enum Read {
    Line(String),
    /// Ctrl-C at the prompt.
    Interrupted,
    /// Ctrl-D, or the end of the piped input.
    Eof,
}

impl LineSource {
    /// The line editor, and a SIGINT handler that turns Ctrl-C during a reply into a flag
    /// (the editor reads Ctrl-C as a key while it has the terminal).
    fn terminal() -> anyhow::Result<Self> {
        // The controlling terminal rather than stdout, so that a redirected stdout still
        // holds only the replies, with no prompt or editing sequences.
        let config = Config::builder().behavior(Behavior::PreferTerm).build();
        let editor = Box::new(
            DefaultEditor::with_config(config)
                .context("cannot set up line editing on the terminal")?,
        );
        let interrupt = Arc::new(AtomicBool::new(false));
        let flag = interrupt.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
        Ok(LineSource::Terminal { editor, interrupt })
    }

    fn read(&mut self) -> anyhow::Result<Read> {
        match self {
            LineSource::Terminal { editor, .. } => match editor.readline(PROMPT) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        // A history that refuses an entry (a duplicate of the last one)
                        // changes nothing the user needs to know.
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    Ok(Read::Line(line))
                }
                Err(ReadlineError::Interrupted) => Ok(Read::Interrupted),
                Err(ReadlineError::Eof) => Ok(Read::Eof),
                Err(e) => Err(e).context("cannot read the terminal"),
            },
            LineSource::Piped(stdin) => {
                let mut line = String::new();
                if stdin.read_line(&mut line).context("cannot read stdin")? == 0 {
                    return Ok(Read::Eof);
                }
                Ok(Read::Line(line))
            }
        }
    }

    /// The flag a Ctrl-C sets while a reply is generated; `None` when piped.
    fn interrupt(&self) -> Option<&AtomicBool> {
        match self {
            LineSource::Terminal { interrupt, .. } => Some(interrupt),
            LineSource::Piped(_) => None,
        }
    }
}

fn notice(interactive: bool, text: &str) {
    if interactive {
        eprintln!("{text}");
    }
}

/// `--chat-template-kwargs`: a JSON object.
fn parse_kwargs(text: Option<&str>) -> anyhow::Result<Map<String, Json>> {
    let Some(text) = text else {
        return Ok(Map::new());
    };
    match serde_json::from_str(text) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(other) => anyhow::bail!("--chat-template-kwargs must be a JSON object, got {other}"),
        Err(e) => anyhow::bail!("--chat-template-kwargs is not valid JSON: {e}"),
    }
}

/// How to produce one reply.
struct Turn<'a> {
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    kwargs: &'a Map<String, Json>,
    params: &'a SamplingParams,
    max_tokens: Option<usize>,
    /// Set by Ctrl-C: abort the reply at the next step.
    interrupt: Option<&'a AtomicBool>,
}

/// How a reply ended.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Done(String),
    /// Ctrl-C: the request was aborted.
    Interrupted,
}

impl Turn<'_> {
    /// Generates the assistant's reply to `messages`, streaming it to `out`.
    fn reply(
        &self,
        engine: &mut LLMEngine,
        messages: &[ChatMessage],
        out: &mut impl Write,
    ) -> anyhow::Result<Reply> {
        // A Ctrl-C pressed before this reply started is not meant for it.
        let interrupted = || {
            self.interrupt
                .is_some_and(|f| f.swap(false, Ordering::SeqCst))
        };
        interrupted();
        let prompt = self.template.render(messages, true, self.kwargs)?;
        let tokenizer = self.tokenizer;
        let prompt_ids = tokenizer.encode(&prompt)?;
        let room = engine.max_model_len().saturating_sub(prompt_ids.len());
        if room == 0 {
            anyhow::bail!(
                "the conversation ({} tokens) fills the model's context of {} tokens: /reset to start over",
                prompt_ids.len(),
                engine.max_model_len()
            );
        }
        let mut params = self.params.clone();
        params.max_tokens = self.max_tokens.unwrap_or(room).min(room);
        let id = engine.add_request(Prompt::TokenIds(prompt_ids.clone()), params)?;
        let mut detokenizer = IncrementalDetokenizer::new(&prompt_ids);
        let mut reply = String::new();
        let mut emit = |text: &str, reply: &mut String| -> anyhow::Result<()> {
            reply.push_str(text);
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        };
        while engine.has_unfinished() {
            if interrupted() {
                // Frees the request's KV blocks; the engine holds nothing else.
                engine.abort(id)?;
                emit("\n", &mut String::new())?;
                return Ok(Reply::Interrupted);
            }
            let step = engine.step()?;
            for &(request, token) in &step.new_tokens {
                if request == id {
                    let delta = detokenizer.push(tokenizer, token)?;
                    emit(&delta, &mut reply)?;
                }
            }
            if let Some(done) = step.finished.iter().find(|f| f.request_id == id) {
                if let Some(error) = &done.error {
                    anyhow::bail!("generation failed: {error}");
                }
                let tail = detokenizer.finish(tokenizer)?;
                emit(&tail, &mut reply)?;
            }
        }
        emit("\n", &mut String::new())?;
        Ok(Reply::Done(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_lines_are_understood() {
        assert_eq!(parse_input("hello there\n"), Input::Message("hello there"));
        assert_eq!(parse_input("  \r\n"), Input::Empty);
        assert_eq!(parse_input("/reset\n"), Input::Reset);
        assert_eq!(parse_input("/exit"), Input::Exit);
        assert_eq!(
            parse_input("/system Be brief.\n"),
            Input::System(Some("Be brief."))
        );
        assert_eq!(parse_input("/system\n"), Input::System(None));
        assert_eq!(parse_input("/frobnicate x"), Input::Unknown("/frobnicate"));
    }

    #[test]
    fn history_puts_the_system_message_first() {
        let mut h = History::default();
        h.turns.push(ChatMessage::user("a"));
        assert_eq!(h.messages(), vec![ChatMessage::user("a")]);
        h.system = Some("s".into());
        assert_eq!(
            h.messages(),
            vec![ChatMessage::system("s"), ChatMessage::user("a")]
        );
    }

    #[test]
    fn kwargs_must_be_an_object() {
        assert!(parse_kwargs(None).unwrap().is_empty());
        assert_eq!(
            parse_kwargs(Some(r#"{"enable_thinking": false}"#)).unwrap()["enable_thinking"],
            Json::Bool(false)
        );
        assert!(parse_kwargs(Some("[1]")).is_err());
        assert!(parse_kwargs(Some("{")).is_err());
    }
}
