using System.CommandLine;
using System.Globalization;
using Loom.Inference;
using Loom.Models.Architectures;
using Loom.Training;

namespace Loom.Cli.Commands;

/// <summary>`loom perplexity`: a model's perplexity on a text, computed as llama.cpp's llama-perplexity computes it.</summary>
internal static class PerplexityCommand
{
    /// <summary>llama-perplexity's default context.</summary>
    private const int DefaultContext = 512;

    public static Command Create(CliConsole console)
    {
        var model = new Option<string?>("--model", "-m") { Description = "GGUF model file (default: the built-in models/loom-primer.gguf)", HelpName = "PATH" };
        var data = new Option<string?>("--data", "-f") { Description = "text to score: a file, a folder of files, or JSONL with a \"text\" field", HelpName = "PATH" };
        var context = new Option<int>("--ctx", "-c") { Description = $"tokens per chunk (0 = {DefaultContext}, or the model's context if shorter)", DefaultValueFactory = _ => 0 };
        var chunks = new Option<int>("--chunks") { Description = "score at most this many chunks (0 = all)", DefaultValueFactory = _ => 0 };
        var threads = new Option<int?>("--threads", "-t") { Description = "compute threads (default: all cores)" };
        var cacheType = CacheTypeOption.Create();
        var command = new Command("perplexity", "Measure a model's perplexity on a text (chunked as llama.cpp's llama-perplexity does, so figures compare)")
        {
            model, data, context, chunks, threads, cacheType,
        };
        command.SetAction(r => LoomCli.Guard(console, () =>
        {
            string modelPath = LoomCli.ModelOrDefault(r.GetValue(model));
            string dataPath = r.GetValue(data) ?? throw new CliException("--data PATH is required");
            int ctx = r.GetValue(context);
            if (ctx < 0) throw new CliException($"--ctx must not be negative (got {ctx})");
            EngineSettings.SetKernelThreads(r.GetValue(threads));

            var documents = TextCorpus.Load(dataPath);
            using var loaded = TransformerModel.Load(modelPath);
            if (ctx == 0) ctx = Math.Min(DefaultContext, loaded.Config.ContextLength);
            int[] tokens = Perplexity.Tokenize(loaded.Tokenizer, documents);
            console.Error.WriteLine($"{documents.Count} document(s), {tokens.Length:N0} tokens; context {ctx}, {EngineSettings.KernelThreads} threads");

            var result = Perplexity.Evaluate(loaded, tokens, ctx, r.GetValue(chunks), progress =>
            {
                console.Error.Write($"[{progress.Chunk}]{progress.RunningPerplexity.ToString("F4", CultureInfo.InvariantCulture)},");
                if (progress.Chunk == progress.Chunks) console.Error.WriteLine();
            }, cacheType: CacheTypeOption.Value(r, cacheType));
            console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"perplexity: {result.Value:F4} ± {result.Uncertainty:F5} ({result.TokensScored:N0} tokens scored in {result.Chunks} chunks " +
                $"of {result.ContextSize}, {result.Elapsed.TotalSeconds:F2} s)"));
            return 0;
        }));
        return command;
    }
}
