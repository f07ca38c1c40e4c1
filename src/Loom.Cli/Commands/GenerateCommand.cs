using System.CommandLine;
using System.Diagnostics;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using Loom.Inference;
using Loom.Inference.Chat;
using Loom.Inference.Generation;
using Loom.Models.Architectures;
using Loom.Server.Engine;
using Spectre.Console;

namespace Loom.Cli.Commands;

/// <summary>`loom generate`: runs a list of prompts and writes one JSON line per prompt.</summary>
internal static class GenerateCommand
{
    internal static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>The most prompts decoded together (the engine's limit on sequences).</summary>
    private const int MaxParallel = 256;

    public static Command Create(CliConsole console)
    {
        var run = new ModelRunOptions(defaultMaxTokens: 128);
        var promptsFile = new Option<string?>("--prompts", "-f") { Description = "file with one prompt per line", HelpName = "FILE" };
        var prompt = new Option<string?>("--prompt", "-p") { Description = "a single prompt", HelpName = "TEXT" };
        var output = new Option<string?>("--output", "-o") { Description = "write JSON lines here instead of stdout", HelpName = "FILE.jsonl" };
        var parallel = new Option<int>("--parallel", "-np") { Description = "prompts decoded together by continuous batching (1 = one after another)", DefaultValueFactory = _ => 8 };
        var command = new Command("generate", "Generate text for one prompt or a file of prompts (questions go through the chat template)");
        run.AddTo(command);
        command.Add(promptsFile);
        command.Add(prompt);
        command.Add(output);
        command.Add(parallel);
        command.SetAction(r => LoomCli.Guard(console, () =>
        {
            string modelPath = LoomCli.ModelOrDefault(r.GetValue(run.Model));
            string[] prompts = ReadPrompts(r.GetValue(promptsFile), r.GetValue(prompt));
            var options = run.Generation(r);
            int contextSize = run.ContextSize(r);
            int together = Math.Min(Parallel(r.GetValue(parallel)), prompts.Length);
            EngineSettings.SetKernelThreads(r.GetValue(run.Threads));
            string? outputPath = r.GetValue(output);

            using var model = TransformerModel.Load(modelPath, run.Load(r));
            if (ChatTemplate.Detect(model.Config.ChatTemplate) is null && !string.IsNullOrWhiteSpace(model.Config.ChatTemplate))
                console.Error.WriteLine("loom: note: the model's chat template is not one Loom recognises; questions run as plain text");
            // One prompt at a time runs on a single session; several share a continuous-batching engine whose queue
            // holds a prompt submitted while its predecessor's slot is still being released.
            var cacheType = run.Cache(r);
            using var session = together == 1 ? new InferenceSession(model, contextSize, cacheType) : null;
            using var engine = together == 1 ? null
                : new LoomEngine(model, new EngineOptions { Parallel = together, ContextSize = contextSize, QueueCapacity = together, CacheType = cacheType });
            var generator = session is null ? null : Generator.ForModel(model, session);
            using var sink = outputPath is null ? null : new StreamWriter(outputPath, append: false, new UTF8Encoding(false));
            TextWriter jsonl = sink ?? console.Out;

            var stderr = ErrorConsole(console);
            var summary = new RunSummary { Parallel = together };
            // A live progress bar only when stderr is a terminal and it will not be interleaved with results on that terminal.
            bool live = console.ErrorIsTerminal && (sink is not null || !console.OutputIsTerminal);
            void RunAll(Action<int, GenerationRecord> progress)
            {
                void Write(int i, GenerationRecord record)
                {
                    summary.Add(record);
                    jsonl.WriteLine(JsonSerializer.Serialize(record, JsonOptions));
                    jsonl.Flush();
                    progress(i, record);
                }
                var clock = Stopwatch.StartNew();
                if (engine is not null) RunBatched(engine, prompts, options, Write);
                else
                    for (int i = 0; i < prompts.Length; i++) Write(i, RunOne(generator!, i, prompts[i], options));
                summary.WallSeconds = clock.Elapsed.TotalSeconds;
            }
            if (live)
            {
                stderr.Progress().AutoClear(false)
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask($"0/{prompts.Length} prompts", maxValue: prompts.Length);
                        RunAll((i, _) =>
                        {
                            task.Description = $"{i + 1}/{prompts.Length} prompts";
                            task.Increment(1);
                        });
                    });
            }
            else
            {
                RunAll((i, rec) => console.Error.WriteLine(
                    $"[{i + 1}/{prompts.Length}] {rec.Kind}, {rec.PromptTokens} prompt + {rec.GeneratedTokens} generated tokens, " +
                    $"{rec.DecodeTokensPerSecond:F1} tok/s ({rec.FinishReason})"));
            }
            stderr.Write(summary.ToTable(EngineSettings.KernelThreads));
            return 0;
        }));
        return command;
    }

    private static int Parallel(int value) => value is >= 1 and <= MaxParallel ? value
        : throw new CliException($"--parallel must be between 1 and {MaxParallel} (got {value})");

    internal static IAnsiConsole ErrorConsole(CliConsole console) => AnsiConsole.Create(new AnsiConsoleSettings
    {
        Out = new AnsiConsoleOutput(console.Error),
        Ansi = console.ErrorIsTerminal ? AnsiSupport.Detect : AnsiSupport.No,
        ColorSystem = console.ErrorIsTerminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
        Interactive = console.ErrorIsTerminal ? InteractionSupport.Detect : InteractionSupport.No,
    });

    internal static string[] ReadPrompts(string? file, string? single)
    {
        if (file is not null && single is not null) throw new CliException("give either --prompts FILE or --prompt TEXT, not both");
        if (single is not null) return [single];
        if (file is null) throw new CliException("no prompts: pass --prompts FILE (one prompt per line) or --prompt TEXT");
        LoomCli.RequireInputFile(file, "prompts file");
        var prompts = File.ReadAllLines(file, Encoding.UTF8).Where(l => l.Trim().Length > 0).ToArray();
        if (prompts.Length == 0) throw new CliException($"prompts file '{file}' has no prompts (it is empty or blank)");
        return prompts;
    }

    internal static GenerationRecord RunOne(Generator generator, int index, string prompt, GenerationOptions options)
    {
        var kind = PromptClassifier.Classify(prompt);
        var header = Header(index, prompt, kind, generator.Template is not null, options);
        try
        {
            var result = generator.Generate(prompt, kind, options);
            return Completed(header, result.Output, result.PromptTokens, result.PrefillTokens, result.GeneratedTokens,
                result.FinishReason, result.PrefillMs, result.DecodeMs);
        }
        catch (Exception e) when (e is PromptTooLongException or ArgumentException)
        {
            // One bad prompt is reported in its own record; the run goes on.
            return header with { Error = e.Message };
        }
    }

    /// <summary>
    /// Runs every prompt on <paramref name="engine"/>, as many at once as it has slots, and hands the records to
    /// <paramref name="write"/> in prompt order, each as soon as it and all before it are complete.
    /// </summary>
    internal static void RunBatched(LoomEngine engine, string[] prompts, GenerationOptions options, Action<int, GenerationRecord> write)
    {
        // Tokenized here, one after another, because the tokenizer serves one caller at a time.
        var kinds = prompts.Select(PromptClassifier.Classify).ToArray();
        var tokens = prompts.Select((p, i) => engine.Prompts.TokenizePrompt(p, kinds[i])).ToArray();
        var records = prompts.Select(_ => new TaskCompletionSource<GenerationRecord>(TaskCreationOptions.RunContinuationsAsynchronously)).ToArray();
        using var stop = new CancellationTokenSource();
        int next = -1;
        // One worker per slot submits a prompt, reads its output to the end, then takes the next prompt. Submitting only
        // when a slot is about to free keeps the timings about the prompt itself rather than its wait in a queue.
        async Task Worker()
        {
            for (int i; (i = Interlocked.Increment(ref next)) < prompts.Length && !stop.IsCancellationRequested;)
            {
                var header = Header(i, prompts[i], kinds[i], engine.Prompts.Template is not null, options);
                try
                {
                    records[i].SetResult(await RunOneBatched(engine, header, tokens[i], options, stop.Token));
                }
                catch (Exception e)
                {
                    records[i].SetException(e);
                }
            }
        }
        var workers = Enumerable.Range(0, engine.Parallel).Select(_ => Task.Run(Worker)).ToArray();
        try
        {
            for (int i = 0; i < prompts.Length; i++) write(i, records[i].Task.GetAwaiter().GetResult());
        }
        finally
        {
            // On failure, sequences still running are cancelled so that the workers end before the engine goes away.
            stop.Cancel();
            Task.WaitAll(workers);
        }
    }

    private static async Task<GenerationRecord> RunOneBatched(LoomEngine engine, GenerationRecord header, int[] promptTokens,
        GenerationOptions options, CancellationToken cancellation)
    {
        SequenceRequest request;
        try
        {
            request = new SequenceRequest(promptTokens, options, topLogprobs: null, cancellation);
            if (!engine.TrySubmit([request])) throw new InvalidOperationException("the engine's queue refused a prompt although it had room");
        }
        catch (Exception e) when (e is PromptTooLongException or ArgumentException)
        {
            return header with { Error = e.Message };
        }
        var output = new StringBuilder();
        await foreach (var item in request.Output.ReadAllAsync(cancellation))
        {
            if (item.Error is not null) throw new SequenceFailedException(item.Error);
            output.Append(item.Text);
            if (item.Finish is not { } finish) continue;
            // The scheduler's timestamps, not this reader's: the reader may wake well after the items were written.
            long firstTokenAt = request.FirstTokenAt != 0 ? request.FirstTokenAt : request.FinishedAt;
            return Completed(header, output.ToString(), promptTokens.Length, promptTokens.Length, item.CompletionTokens, finish,
                Stopwatch.GetElapsedTime(request.QueuedAt, firstTokenAt).TotalMilliseconds,
                Stopwatch.GetElapsedTime(firstTokenAt, request.FinishedAt).TotalMilliseconds);
        }
        throw new InvalidOperationException("a sequence ended without a result");
    }

    /// <summary>A prompt's record before it runs: what it is, and an error until it completes.</summary>
    private static GenerationRecord Header(int index, string prompt, PromptKind kind, bool hasTemplate, GenerationOptions options) => new()
    {
        Index = index,
        Prompt = prompt,
        Kind = KindName(kind),
        ChatTemplate = kind == PromptKind.Question && hasTemplate,
        Output = "",
        FinishReason = "error",
        Seed = options.Sampling.Seed,
    };

    private static GenerationRecord Completed(GenerationRecord header, string output, int promptTokens, int prefillTokens, int generatedTokens,
        FinishReason finish, double prefillMs, double decodeMs)
    {
        static double Rate(int tokens, double ms) => ms > 0 ? Math.Round(tokens * 1000.0 / ms, 2) : 0;
        return header with
        {
            Output = output,
            PromptTokens = promptTokens,
            GeneratedTokens = generatedTokens,
            FinishReason = FinishName(finish),
            PrefillMs = Math.Round(prefillMs, 3),
            DecodeMs = Math.Round(decodeMs, 3),
            PrefillTokensPerSecond = Rate(prefillTokens, prefillMs),
            DecodeTokensPerSecond = Rate(generatedTokens, decodeMs),
        };
    }

    private static string KindName(PromptKind kind) => kind == PromptKind.Question ? "question" : "continuation";

    internal static string FinishName(FinishReason reason) => reason switch
    {
        FinishReason.Stop => "stop",
        FinishReason.Length => "length",
        FinishReason.EndOfGeneration => "eos",
        _ => reason.ToString().ToLowerInvariant(),
    };
}

/// <summary>One line of `loom generate` output.</summary>
internal sealed record GenerationRecord
{
    public int Index { get; init; }
    public required string Prompt { get; init; }
    public required string Kind { get; init; }
    /// <summary>Whether the prompt went through the model's chat template.</summary>
    public bool ChatTemplate { get; init; }
    public required string Output { get; init; }
    public int PromptTokens { get; init; }
    public int GeneratedTokens { get; init; }
    public required string FinishReason { get; init; }
    public double PrefillMs { get; init; }
    public double DecodeMs { get; init; }
    public double PrefillTokensPerSecond { get; init; }
    public double DecodeTokensPerSecond { get; init; }
    public uint Seed { get; init; }
    public string? Error { get; init; }
}

/// <summary>Totals over a run, shown as a table on stderr at the end.</summary>
internal sealed class RunSummary
{
    public int Prompts, Failed, PromptTokens, GeneratedTokens;
    public double PrefillMs, DecodeMs;
    /// <summary>Prompts decoded together; above 1 the per-prompt times overlap.</summary>
    public int Parallel { get; init; } = 1;
    /// <summary>The whole run, from the first prompt to the last record (the model is already loaded).</summary>
    public double WallSeconds { get; set; }

    public void Add(GenerationRecord r)
    {
        Prompts++;
        if (r.Error is not null) { Failed++; return; }
        PromptTokens += r.PromptTokens;
        GeneratedTokens += r.GeneratedTokens;
        PrefillMs += r.PrefillMs;
        DecodeMs += r.DecodeMs;
    }

    public Table ToTable(int threads)
    {
        static string Rate(int tokens, double ms) => ms > 0 ? (tokens * 1000.0 / ms).ToString("F1") : "-";
        // Decoded together, each prompt's prefill (to its first token) and decode overlap the others': their sums are
        // not time the run took, so they are labelled as sums and the wall-clock row gives the run's throughput.
        string summed = Parallel > 1 ? " (sum over prompts)" : "";
        var table = new Table().Title("loom generate").AddColumns("", "tokens", "time (s)", "tokens/s");
        table.AddRow("prefill" + summed, PromptTokens.ToString(), (PrefillMs / 1000).ToString("F2"), Rate(PromptTokens, PrefillMs));
        table.AddRow("decode" + summed, GeneratedTokens.ToString(), (DecodeMs / 1000).ToString("F2"), Rate(GeneratedTokens, DecodeMs));
        table.AddRow("generated, wall clock", GeneratedTokens.ToString(), WallSeconds.ToString("F2"), Rate(GeneratedTokens, WallSeconds * 1000));
        table.Caption($"{Prompts} prompts ({Parallel} at a time), {Failed} failed, {threads} threads; " +
                      $"wall clock {WallSeconds:F2} s for {PromptTokens} prompt + {GeneratedTokens} generated tokens");
        return table;
    }
}
