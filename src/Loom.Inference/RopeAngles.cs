using Loom.Models.Architectures;

namespace Loom.Inference;

/// <summary>
/// Cosines and sines of the rotary embedding, computed as ggml's rope does (angles advanced by repeated float
/// multiplication, optional per-pair frequency divisors, linear or YaRN scaling) so results match llama.cpp.
/// </summary>
internal sealed unsafe class RopeAngles
{
    private readonly int _pairs;
    private readonly float _thetaScale;
    private readonly float _frequencyScale;
    private readonly float _extFactor;
    private readonly float _magnitude;
    private readonly float _rampLow, _rampHigh;
    private readonly float[]? _frequencyFactors;

    public RopeAngles(ModelConfig config, float[]? frequencyFactors)
    {
        int dims = config.RopeDimensionCount;
        _pairs = dims / 2;
        _frequencyFactors = frequencyFactors;
        if (dims == 0) return;
        _thetaScale = MathF.Pow(config.RopeFreqBase, -2f / dims);
        _frequencyScale = 1f / config.RopeScalingFactor;
        _extFactor = config.YarnExtFactor;
        _magnitude = config.YarnAttnFactor;
        if (_extFactor != 0f)
        {
            // YaRN raises the attention magnitude with the interpolation factor.
            _magnitude *= 1f + 0.1f * MathF.Log(1f / _frequencyScale);
            float CorrectionDim(float rotations) =>
                dims * MathF.Log(config.RopeOriginalContextLength / (rotations * 2 * MathF.PI)) / (2 * MathF.Log(config.RopeFreqBase));
            _rampLow = MathF.Max(0, MathF.Floor(CorrectionDim(config.YarnBetaFast)));
            _rampHigh = MathF.Min(dims - 1, MathF.Ceiling(CorrectionDim(config.YarnBetaSlow)));
        }
    }

    /// <summary>Fills cos/sin[t·pairs + i] for positions start..start+count−1.</summary>
    public void Compute(int start, int count, float* cos, float* sin)
    {
        for (int t = 0; t < count; t++)
        {
            float theta = start + t;
            for (int i = 0; i < _pairs; i++, theta *= _thetaScale)
            {
                float extrapolated = _frequencyFactors is null ? theta : theta / _frequencyFactors[i];
                float interpolated = _frequencyScale * extrapolated;
                float angle = interpolated;
                if (_extFactor != 0f)
                {
                    float mix = Ramp(i) * _extFactor;
                    angle = interpolated * (1 - mix) + extrapolated * mix;
                }
                cos[t * _pairs + i] = MathF.Cos(angle) * _magnitude;
                sin[t * _pairs + i] = MathF.Sin(angle) * _magnitude;
            }
        }
    }

    /// <summary>1 for dimension pairs below the correction range (pure extrapolation), 0 above it, linear between.</summary>
    private float Ramp(int pair)
    {
        float y = (pair - _rampLow) / MathF.Max(0.001f, _rampHigh - _rampLow);
        return 1f - MathF.Min(1f, MathF.Max(0f, y));
    }
}
