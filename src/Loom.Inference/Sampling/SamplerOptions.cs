namespace Loom.Inference.Sampling;

/// <summary>
/// Sampling settings with llama.cpp's defaults. A sampler stage is disabled by its neutral value
/// (TopK ≤ 0, TopP ≥ 1, MinP ≤ 0, RepeatPenalty = 1, penalties 0); Temperature ≤ 0 means greedy.
/// </summary>
public sealed record SamplerOptions
{
    public float Temperature { get; init; } = 0.8f;
    public int TopK { get; init; } = 40;
    public float TopP { get; init; } = 0.95f;
    public float MinP { get; init; } = 0.05f;
    /// <summary>Divides positive / multiplies negative logits of tokens seen in the last <see cref="PenaltyLastN"/> tokens.</summary>
    public float RepeatPenalty { get; init; } = 1.0f;
    public float FrequencyPenalty { get; init; }
    public float PresencePenalty { get; init; }
    /// <summary>How many recent tokens the penalties look at (0 disables them).</summary>
    public int PenaltyLastN { get; init; } = 64;
    /// <summary>Seed of the random generator (llama.cpp's std::mt19937): the same seed gives the same tokens for the same logits.</summary>
    public uint Seed { get; init; } = 42;

    /// <summary>Largest penalty window accepted (far beyond any context; keeps a typo from allocating gigabytes).</summary>
    public const int MaxPenaltyLastN = 1 << 20;

    public static SamplerOptions Greedy { get; } = new() { Temperature = 0 };

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first setting that is out of range.</summary>
    public void Validate()
    {
        if (float.IsNaN(Temperature)) throw new ArgumentException("temperature must be a number");
        if (!(TopP >= 0)) throw new ArgumentException($"top-p must be between 0 and 1 (got {TopP})");
        if (!(MinP >= 0 && MinP <= 1)) throw new ArgumentException($"min-p must be between 0 and 1 (got {MinP})");
        if (!(RepeatPenalty > 0)) throw new ArgumentException($"repeat penalty must be positive (got {RepeatPenalty})");
        if (!float.IsFinite(FrequencyPenalty)) throw new ArgumentException("frequency penalty must be finite");
        if (!float.IsFinite(PresencePenalty)) throw new ArgumentException("presence penalty must be finite");
        if (PenaltyLastN < 0 || PenaltyLastN > MaxPenaltyLastN)
            throw new ArgumentException($"the penalty window must be between 0 and {MaxPenaltyLastN} tokens (got {PenaltyLastN})");
    }
}
