using System.CommandLine;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using Loom.Inference;
using Loom.Inference.Generation;
using Loom.Models.Architectures;
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

    public static Command Create(CliConsole console)
    {
        var run = new ModelRunOptions(defaultMaxTokens: 128);
        var promptsFile = new Option<string?>("--prompts", "-f") { Description = "file with one prompt per line", HelpName = "FILE" };
        var prompt = new Option<string?>("--prompt", "-p") { Description = "a single prompt", HelpName = "TEXT" };
        var output = new Option<string?>("--output", "-o") { Description = "write JSON lines here instead of stdout", HelpName = "FILE.jsonl" };
        var command = new Command("generate", "Generate text for one prompt or a file of prompts (questions go through the chat template)");
        run.AddTo(command);
        command.Add(promptsFile);
        command.Add(prompt);
        command.Add(output);
        command.SetAction(r => LoomCli.Guard(console, () =>
        {
            string modelPath = LoomCli.ModelOrDefault(r.GetValue(run.Model));
            string[] prompts = ReadPrompts(r.GetValue(promptsFile), r.GetValue(prompt));
            var options = run.Generation(r);
            int contextSize = run.ContextSize(r);
            EngineSettings.SetKernelThreads(r.GetValue(run.Threads));
            string? outputPath = r.GetValue(output);

            using var model = TransformerModel.Load(modelPath);
            using var session = new InferenceSession(model, contextSize);
            var generator = Generator.ForModel(model, session);
            if (generator.Template is null && !string.IsNullOrWhiteSpace(model.Config.ChatTemplate))
                console.Error.WriteLine("loom: note: the model's chat template is not one Loom recognises; questions run as plain text");
            using var sink = outputPath is null ? null : new StreamWriter(outputPath, append: false, new UTF8Encoding(false));
            TextWriter jsonl = sink ?? console.Out;

            var stderr = ErrorConsole(console);
            var summary = new RunSummary();
            // A live progress bar only when stderr is a terminal and it will not be interleaved with results on that terminal.
            bool live = console.ErrorIsTerminal && (sink is not null || !console.OutputIsTerminal);
            void RunAll(Action<int, GenerationRecord> progress)
            {
                for (int i = 0; i < prompts.Length; i++)
                {
                    var record = RunOne(generator, i, prompts[i], options);
                    summary.Add(record);
                    jsonl.WriteLine(JsonSerializer.Serialize(record, JsonOptions));
                    jsonl.Flush();
                    progress(i, record);
                }
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
        bool templated = kind == PromptKind.Question && generator.Template is not null;
        try
        {
            var result = generator.Generate(prompt, kind, options);
            return new GenerationRecord
            {
                Index = index,
                Prompt = prompt,
                Kind = KindName(kind),
                ChatTemplate = templated,
                Output = result.Output,
                PromptTokens = result.PromptTokens,
                GeneratedTokens = result.GeneratedTokens,
                FinishReason = FinishName(result.FinishReason),
                PrefillMs = Math.Round(result.PrefillMs, 3),
                DecodeMs = Math.Round(result.DecodeMs, 3),
                PrefillTokensPerSecond = Math.Round(result.PrefillTokensPerSecond, 2),
                DecodeTokensPerSecond = Math.Round(result.DecodeTokensPerSecond, 2),
                Seed = options.Sampling.Seed,
            };
        }
        catch (Exception e) when (e is PromptTooLongException or ArgumentException)
        {
            // One bad prompt is reported in its own record; the run goes on.
            return new GenerationRecord
            {
                Index = index, Prompt = prompt, Kind = KindName(kind), ChatTemplate = templated, Output = "",
                FinishReason = "error", Error = e.Message, Seed = options.Sampling.Seed,
            };
        }
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
        var table = new Table().Title("loom generate").AddColumns("", "tokens", "time (s)", "tokens/s");
        table.AddRow("prefill", PromptTokens.ToString(), (PrefillMs / 1000).ToString("F2"), Rate(PromptTokens, PrefillMs));
        table.AddRow("decode", GeneratedTokens.ToString(), (DecodeMs / 1000).ToString("F2"), Rate(GeneratedTokens, DecodeMs));
        table.Caption($"{Prompts} prompts, {Failed} failed, {threads} threads");
        return table;
    }
}
