using System.Diagnostics;

namespace Loom.Training;

public sealed record TrainingOptions
{
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 8;
    /// <summary>Tokens per training sequence (at most the model's context).</summary>
    public required int ContextLength { get; init; }
    /// <summary>Micro-batches whose gradients are summed (each scaled by 1/k) before one optimizer step.</summary>
    public int GradientAccumulation { get; init; } = 1;
    public float PeakLearningRate { get; init; } = 1e-3f;
    public float MinimumLearningRate { get; init; } = 1e-4f;
    public int WarmupSteps { get; init; } = 100;
    public float WeightDecay { get; init; } = 0.1f;
    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.95f;
    /// <summary>Largest global gradient norm; 0 turns clipping off.</summary>
    public float GradientClip { get; init; } = 1f;
    public float AttentionDropout { get; init; }
    public float ResidualDropout { get; init; }
    /// <summary>Validation (and checkpoint) every this many steps, and after the last step.</summary>
    public int EvalInterval { get; init; } = 100;
    /// <summary>Most validation batches per evaluation (windows are taken in order, so each evaluation sees the same text).</summary>
    public int EvalBatches { get; init; } = 8;
    /// <summary>Evaluations without a new best validation loss before stopping; 0 never stops early.</summary>
    public int Patience { get; init; }
    public ulong Seed { get; init; } = 1;
    public int Threads { get; init; } = 2;
    /// <summary>
    /// Arithmetic of the matrix products: fp32, or bf16 (inputs rounded to bfloat16, fp32 accumulation; fp32 master
    /// weights, gradients and AdamW state), the mixed precision of PyTorch's autocast.
    /// </summary>
    public TrainingPrecision Precision { get; init; } = TrainingPrecision.Fp32;
    /// <summary>Where checkpoints go (rewritten atomically at each evaluation), or null for none.</summary>
    public string? CheckpointPath { get; init; }

    public void Validate(ModelShape shape)
    {
        void Require(bool ok, string message)
        {
            if (!ok) throw new ArgumentException(message);
        }
        Require(Steps >= 1, $"steps must be positive, got {Steps}");
        Require(BatchSize >= 1, $"batch size must be positive, got {BatchSize}");
        Require(ContextLength >= 1 && ContextLength <= shape.Context, $"context length {ContextLength} must be between 1 and the model's context {shape.Context}");
        Require(GradientAccumulation >= 1, $"gradient accumulation must be positive, got {GradientAccumulation}");
        Require(PeakLearningRate > 0 && MinimumLearningRate >= 0 && MinimumLearningRate <= PeakLearningRate,
            $"learning rates must satisfy 0 ≤ minimum ({MinimumLearningRate}) ≤ peak ({PeakLearningRate}), peak > 0");
        Require(WarmupSteps >= 0, $"warm-up steps must not be negative, got {WarmupSteps}");
        Require(GradientClip >= 0, $"gradient clip must not be negative, got {GradientClip}");
        Require(AttentionDropout is >= 0 and < 1 && ResidualDropout is >= 0 and < 1, "dropout rates must be in [0, 1)");
        Require(EvalInterval >= 1 && EvalBatches >= 1, "evaluation interval and batches must be positive");
        Require(Patience >= 0, $"patience must not be negative, got {Patience}");
        Require(Threads >= 1, $"threads must be positive, got {Threads}");
        Require(Enum.IsDefined(Precision), $"unknown precision {Precision}");
    }
}

public readonly record struct StepResult(long Step, double Loss, float LearningRate, float GradientNorm, int Tokens, double Seconds);

public readonly record struct EvaluationResult(long Step, double ValidationLoss, bool Improved, bool StopEarly)
{
    public double Perplexity => Math.Exp(ValidationLoss);
}

/// <summary>
/// The training loop: shuffled batches, gradient accumulation, clipping, AdamW on the warm-up + cosine schedule,
/// periodic validation with early stopping, and atomic checkpoints from which a run resumes exactly (same losses,
/// bit for bit, as if it had never stopped).
/// </summary>
public sealed class Trainer
{
    private readonly TrainingOptions _options;
    private readonly TokenDataset _data;
    private readonly BatchSampler _sampler;
    private readonly LearningRateSchedule _schedule;
    private readonly int[] _inputs, _targets;
    // Draws one dropout key per micro-batch; its state is checkpointed.
    private readonly DeterministicRandom _dropoutKeys;

    public Trainer(Decoder model, TokenDataset data, TrainingOptions options)
    {
        options.Validate(model.Shape);
        if (data.VocabSize > model.Shape.VocabSize)
            throw new ArgumentException($"the data's vocabulary ({data.VocabSize}) is larger than the model's ({model.Shape.VocabSize})");
        data.RequireContext(options.ContextLength);
        Model = model;
        _data = data;
        _options = options;
        model.Threads = options.Threads;
        model.Precision = options.Precision;
        model.AttentionDropout = options.AttentionDropout;
        model.ResidualDropout = options.ResidualDropout;
        Optimizer = new AdamW(model.Layout, options.Beta1, options.Beta2, weightDecay: options.WeightDecay);
        _schedule = new LearningRateSchedule(options.PeakLearningRate, options.MinimumLearningRate, options.WarmupSteps, options.Steps);
        _sampler = new BatchSampler(data.Train, options.ContextLength, DeterministicRandom.Mix(options.Seed));
        _dropoutKeys = new DeterministicRandom(DeterministicRandom.Mix(options.Seed ^ 0xD50u));
        _inputs = new int[options.BatchSize * options.ContextLength];
        _targets = new int[options.BatchSize * options.ContextLength];
    }

    public Decoder Model { get; }
    public AdamW Optimizer { get; }
    /// <summary>Optimizer steps completed.</summary>
    public long Step { get; private set; }
    public double BestValidationLoss { get; private set; } = double.PositiveInfinity;
    /// <summary>Evaluations since the best validation loss.</summary>
    public int EvaluationsWithoutImprovement { get; private set; }
    public bool Finished => Step >= _options.Steps;

    /// <summary>One optimizer step over <see cref="TrainingOptions.GradientAccumulation"/> micro-batches.</summary>
    public StepResult TrainStep()
    {
        var clock = Stopwatch.StartNew();
        int batch = _options.BatchSize, context = _options.ContextLength, micro = _options.GradientAccumulation;
        Model.ZeroGradients();
        double loss = 0;
        for (int m = 0; m < micro; m++)
        {
            _sampler.Next(batch, _inputs, _targets);
            ulong key = _dropoutKeys.NextUInt64() | 1; // never 0, which means "no dropout"
            loss += Model.Forward(_inputs, _targets, batch, context, key) / micro;
            Model.Backward(1f / micro);
        }
        float norm = _options.GradientClip > 0
            ? GradientClipping.ClipByGlobalNorm(Model.Gradients, _options.GradientClip, Model.Threads)
            : System.Numerics.Tensors.TensorPrimitives.Norm(Model.Gradients);
        float rate = _schedule.At(Step);
        Optimizer.Update(Model.Parameters, Model.Gradients, rate, Model.Threads);
        Step++;
        if (!double.IsFinite(loss)) throw new InvalidOperationException($"training diverged at step {Step}: loss {loss}; lower the learning rate");
        return new StepResult(Step, loss, rate, norm, batch * context * micro, clock.Elapsed.TotalSeconds);
    }

    /// <summary>Mean loss over the first validation windows (the same ones every time), without dropout.</summary>
    public double ValidationLoss()
    {
        int context = _options.ContextLength;
        int windows = Math.Min(TokenDataset.WindowCount(_data.Validation, context), _options.EvalBatches * _options.BatchSize);
        double total = 0;
        for (int first = 0; first < windows; first += _options.BatchSize)
        {
            int batch = Math.Min(_options.BatchSize, windows - first);
            for (int b = 0; b < batch; b++)
                TokenDataset.CopyWindow(_data.Validation, first + b, context, _inputs.AsSpan(b * context, context), _targets.AsSpan(b * context, context));
            total += Model.Forward(_inputs.AsSpan(0, batch * context), _targets.AsSpan(0, batch * context), batch, context) * batch;
        }
        return total / windows;
    }

    /// <summary>Validates, updates early stopping, and writes the checkpoint when one is configured.</summary>
    public EvaluationResult Evaluate()
    {
        double loss = ValidationLoss();
        bool improved = loss < BestValidationLoss;
        if (improved)
        {
            BestValidationLoss = loss;
            EvaluationsWithoutImprovement = 0;
        }
        else EvaluationsWithoutImprovement++;
        if (_options.CheckpointPath is { } path) Checkpoint.Save(path, this);
        bool stop = _options.Patience > 0 && EvaluationsWithoutImprovement >= _options.Patience;
        return new EvaluationResult(Step, loss, improved, stop);
    }

    /// <summary>Trains until the last step or early stopping, reporting every step and every evaluation.</summary>
    public void Run(Action<StepResult>? onStep = null, Action<EvaluationResult>? onEvaluation = null, CancellationToken cancellation = default)
    {
        while (!Finished)
        {
            cancellation.ThrowIfCancellationRequested();
            var step = TrainStep();
            onStep?.Invoke(step);
            if (Step % _options.EvalInterval == 0 || Finished)
            {
                var evaluation = Evaluate();
                onEvaluation?.Invoke(evaluation);
                if (evaluation.StopEarly) return;
            }
        }
    }

    internal TrainerState CaptureState() =>
        new(Step, Optimizer.Step, _sampler.State, _dropoutKeys.State, BestValidationLoss, EvaluationsWithoutImprovement);

    internal void RestoreState(TrainerState state)
    {
        Step = state.Step;
        Optimizer.Step = state.OptimizerStep;
        _sampler.Restore(state.Sampler);
        _dropoutKeys.State = state.DropoutKeyState;
        BestValidationLoss = state.BestValidationLoss;
        EvaluationsWithoutImprovement = state.EvaluationsWithoutImprovement;
    }
}

internal readonly record struct TrainerState(long Step, long OptimizerStep, SamplerState Sampler, ulong DropoutKeyState,
    double BestValidationLoss, int EvaluationsWithoutImprovement);
