using System.CommandLine;
using Loom.Inference;
using Loom.Inference.Generation;
using Loom.Inference.Sampling;
using Loom.Models.Architectures;

namespace Loom.Cli.Commands;

/// <summary>How the commands that load a model place its weights.</summary>
internal static class WeightPlacementOption
{
    public static Option<bool> Create() =>
        new("--no-huge-pages") { Description = "leave the weight matrices in the file's memory map instead of copying them into 2 MiB pages" };

    public static ModelLoadOptions LoadOptions(ParseResult r, Option<bool> noHugePages) => new() { HugePages = !r.GetValue(noHugePages) };
}

/// <summary>How the commands that run a model store the KV cache (llama.cpp's --cache-type-k/-v, both at once).</summary>
internal static class CacheTypeOption
{
    public static Option<string> Create()
    {
        var option = new Option<string>("--cache-type", "-ct")
        {
            Description = "KV cache element type: f16 (llama.cpp's default, half the memory) or f32 (attention on unrounded keys and values)",
            DefaultValueFactory = _ => "f16",
            HelpName = "f16|f32",
        };
        option.AcceptOnlyFromAmong("f16", "f32");
        return option;
    }

    public static KvCacheType Value(ParseResult r, Option<string> option) => r.GetValue(option) == "f32" ? KvCacheType.F32 : KvCacheType.F16;
}

/// <summary>Options shared by the commands that run a model (generate, chat), with llama.cpp's defaults.</summary>
internal sealed class ModelRunOptions
{
    private static readonly SamplerOptions Defaults = new();

    public Option<string?> Model { get; } = new("--model", "-m") { Description = "GGUF model file (default: Loom's small built-in model, models/loom-primer.gguf)", HelpName = "PATH" };
    public Option<int> MaxTokens { get; }
    public Option<float> Temperature { get; } = new("--temperature", "--temp") { Description = "sampling temperature; 0 = greedy", DefaultValueFactory = _ => Defaults.Temperature };
    public Option<int> TopK { get; } = new("--top-k") { Description = "keep the k most likely tokens (0 = off)", DefaultValueFactory = _ => Defaults.TopK };
    public Option<float> TopP { get; } = new("--top-p") { Description = "nucleus sampling threshold (1 = off)", DefaultValueFactory = _ => Defaults.TopP };
    public Option<float> MinP { get; } = new("--min-p") { Description = "drop tokens below min-p × the top probability (0 = off)", DefaultValueFactory = _ => Defaults.MinP };
    public Option<float> RepeatPenalty { get; } = new("--repeat-penalty") { Description = "penalty for recently seen tokens (1 = off)", DefaultValueFactory = _ => Defaults.RepeatPenalty };
    public Option<int> RepeatLastN { get; } = new("--repeat-last-n") { Description = "how many recent tokens the penalties consider", DefaultValueFactory = _ => Defaults.PenaltyLastN };
    public Option<float> FrequencyPenalty { get; } = new("--frequency-penalty") { Description = "subtracted once per occurrence in the window", DefaultValueFactory = _ => 0f };
    public Option<float> PresencePenalty { get; } = new("--presence-penalty") { Description = "subtracted once if present in the window", DefaultValueFactory = _ => 0f };
    public Option<long> Seed { get; } = new("--seed", "-s") { Description = "random seed (the same seed gives the same output); negative = random", DefaultValueFactory = _ => 42 };
    public Option<int?> Threads { get; } = new("--threads", "-t") { Description = "compute threads (default: all cores)" };
    public Option<int> Context { get; } = new("--ctx", "-c") { Description = "context size in tokens (0 = the model's trained context, capped at 4096)", DefaultValueFactory = _ => 0 };
    public Option<string[]> Stop { get; } = new("--stop") { Description = "stop when this text appears (repeatable)" };
    public Option<bool> IgnoreEos { get; } = new("--ignore-eos") { Description = "never sample end-of-generation tokens: run to --max-tokens, a stop string or a full context" };
    public Option<bool> NoHugePages { get; } = WeightPlacementOption.Create();
    public Option<string> CacheType { get; } = CacheTypeOption.Create();

    public ModelRunOptions(int defaultMaxTokens)
    {
        MaxTokens = new("--max-tokens", "-n") { Description = "maximum new tokens per prompt", DefaultValueFactory = _ => defaultMaxTokens };
    }

    public void AddTo(Command command)
    {
        foreach (Option o in new Option[] { Model, MaxTokens, Temperature, TopK, TopP, MinP, RepeatPenalty, RepeatLastN,
                                            FrequencyPenalty, PresencePenalty, Seed, Threads, Context, Stop, IgnoreEos, NoHugePages, CacheType })
            command.Add(o);
    }

    public ModelLoadOptions Load(ParseResult r) => WeightPlacementOption.LoadOptions(r, NoHugePages);

    public KvCacheType Cache(ParseResult r) => CacheTypeOption.Value(r, CacheType);

    public SamplerOptions Sampling(ParseResult r)
    {
        long seed = r.GetValue(Seed);
        if (seed > uint.MaxValue) throw new CliException($"--seed must be at most {uint.MaxValue} (got {seed})");
        var options = new SamplerOptions
        {
            Temperature = r.GetValue(Temperature),
            TopK = r.GetValue(TopK),
            TopP = r.GetValue(TopP),
            MinP = r.GetValue(MinP),
            RepeatPenalty = r.GetValue(RepeatPenalty),
            PenaltyLastN = r.GetValue(RepeatLastN),
            FrequencyPenalty = r.GetValue(FrequencyPenalty),
            PresencePenalty = r.GetValue(PresencePenalty),
            Seed = seed >= 0 ? (uint)seed : (uint)Random.Shared.NextInt64(1L << 32),
        };
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
        return options;
    }

    /// <summary>The generation settings every run command takes: token budget, sampling, stop strings and --ignore-eos.</summary>
    public GenerationOptions Generation(ParseResult r) => new()
    {
        MaxNewTokens = MaxNewTokens(r),
        Sampling = Sampling(r),
        StopStrings = r.GetValue(Stop) ?? [],
        IgnoreEndOfGeneration = r.GetValue(IgnoreEos),
    };

    public int ContextSize(ParseResult r)
    {
        int ctx = r.GetValue(Context);
        if (ctx < 0) throw new CliException($"--ctx must not be negative (got {ctx})");
        return ctx;
    }

    public int MaxNewTokens(ParseResult r)
    {
        int n = r.GetValue(MaxTokens);
        if (n < 0) throw new CliException($"--max-tokens must not be negative (got {n})");
        return n;
    }
}
