using System.CommandLine;
using System.Diagnostics;
using Loom.Models.Gguf;
using Loom.Training;

namespace Loom.Cli.Commands;

/// <summary>`loom train`: trains a Llama-style model from text and exports it as GGUF.</summary>
internal static class TrainCommand
{
    public static Command Create(CliConsole console)
    {
        var data = new Option<string?>("--data") { Description = "training text: a file, a folder of files, or JSONL with a \"text\" field", HelpName = "PATH" };
        var output = new Option<string?>("--out") { Description = "folder for checkpoint.bin, model.gguf and the loss history (loss.csv, loss.png)", HelpName = "DIR" };
        var tokenizerFrom = new Option<string?>("--tokenizer-from") { Description = "use this GGUF's tokenizer, a model's or one from `loom tokenizer train` (default: one token per byte)", HelpName = "FILE.gguf" };
        var parseSpecial = new Option<bool>("--parse-special") { Description = "special-token text in the data (e.g. ChatML's <|im_start|>) becomes that token" };
        var initFrom = new Option<string?>("--init-from") { Description = "start from this checkpoint's weights (and shape) with a fresh optimizer and schedule", HelpName = "CHECKPOINT" };
        var dim = new Option<int>("--dim") { Description = "embedding width", DefaultValueFactory = _ => 256 };
        var layers = new Option<int>("--layers") { Description = "transformer blocks", DefaultValueFactory = _ => 4 };
        var heads = new Option<int>("--heads") { Description = "attention heads", DefaultValueFactory = _ => 8 };
        var kvHeads = new Option<int>("--kv-heads") { Description = "key/value heads (grouped-query attention)", DefaultValueFactory = _ => 4 };
        var hidden = new Option<int>("--hidden") { Description = "feed-forward width (0 = 8/3 × dim rounded to 32)", DefaultValueFactory = _ => 0 };
        var context = new Option<int>("--ctx", "-c") { Description = "context length in tokens", DefaultValueFactory = _ => 128 };
        var batch = new Option<int>("--batch", "-b") { Description = "sequences per micro-batch", DefaultValueFactory = _ => 8 };
        var accumulate = new Option<int>("--accumulate") { Description = "micro-batches per optimizer step", DefaultValueFactory = _ => 1 };
        var steps = new Option<int>("--steps") { Description = "optimizer steps", DefaultValueFactory = _ => 1000 };
        var rate = new Option<float>("--lr") { Description = "peak learning rate", DefaultValueFactory = _ => 1e-3f };
        var minRate = new Option<float>("--min-lr") { Description = "learning rate at the end of the cosine decay", DefaultValueFactory = _ => 1e-4f };
        var warmup = new Option<int>("--warmup") { Description = "linear warm-up steps", DefaultValueFactory = _ => 100 };
        var weightDecay = new Option<float>("--weight-decay") { Description = "AdamW decoupled weight decay", DefaultValueFactory = _ => 0.1f };
        var clip = new Option<float>("--clip") { Description = "largest global gradient norm (0 = off)", DefaultValueFactory = _ => 1f };
        var dropout = new Option<float>("--dropout") { Description = "attention and residual dropout", DefaultValueFactory = _ => 0f };
        var validation = new Option<double>("--validation") { Description = "fraction of the tokens held out for validation", DefaultValueFactory = _ => 0.1 };
        var evalEvery = new Option<int>("--eval-every") { Description = "validate and checkpoint every N steps", DefaultValueFactory = _ => 100 };
        var patience = new Option<int>("--patience") { Description = "stop after N validations without improvement (0 = never)", DefaultValueFactory = _ => 0 };
        var seed = new Option<long>("--seed", "-s") { Description = "seed for initialization, shuffling and dropout", DefaultValueFactory = _ => 1 };
        var threads = new Option<int>("--threads", "-t") { Description = "compute threads", DefaultValueFactory = _ => Math.Min(2, Environment.ProcessorCount) };
        var resume = new Option<bool>("--resume") { Description = "continue from DIR/checkpoint.bin" };
        var arithmetic = new Option<string>("--precision") { Description = "matrix-product arithmetic: fp32, or bf16 (mixed precision, fp32 master weights)", DefaultValueFactory = _ => "fp32" };
        var precision = new Option<string>("--export") { Description = "GGUF precision: f32, f16 or q8_0", DefaultValueFactory = _ => "f32" };

        var command = new Command("train", "Train a Llama-style model on text and export it as GGUF")
        {
            data, output, tokenizerFrom, parseSpecial, initFrom, dim, layers, heads, kvHeads, hidden, context, batch, accumulate, steps, rate, minRate,
            warmup, weightDecay, clip, dropout, validation, evalEvery, patience, seed, threads, resume, precision, arithmetic,
        };
        command.SetAction(r => LoomCli.Guard(console, () =>
        {
            string dataPath = r.GetValue(data) ?? throw new CliException("--data PATH is required");
            string outDir = r.GetValue(output) ?? throw new CliException("--out DIR is required");
            var exportPrecision = r.GetValue(precision)?.ToLowerInvariant() switch
            {
                "f32" => ExportPrecision.F32,
                "f16" => ExportPrecision.F16,
                "q8_0" => ExportPrecision.Q8_0,
                var other => throw new CliException($"--export must be f32, f16 or q8_0, not '{other}'"),
            };
            var trainingPrecision = r.GetValue(arithmetic)?.ToLowerInvariant() switch
            {
                "fp32" => TrainingPrecision.Fp32,
                "bf16" => TrainingPrecision.Bf16,
                var other => throw new CliException($"--precision must be fp32 or bf16, not '{other}'"),
            };
            Directory.CreateDirectory(outDir);
            string checkpointPath = Path.Combine(outDir, "checkpoint.bin");

            GgufFile? tokenizerFile = r.GetValue(tokenizerFrom) is { } source ? GgufFile.Open(LoomCli.RequireModelFile(source)) : null;
            try
            {
                if (tokenizerFile is null && r.GetValue(parseSpecial)) throw new CliException("--parse-special needs --tokenizer-from: the byte tokenizer has no special tokens");
                ITokenEncoder encoder = tokenizerFile is null ? new ByteTokenEncoder() : new GgufTokenEncoder(tokenizerFile, r.GetValue(parseSpecial));
                var documents = TextCorpus.Load(dataPath);
                var dataset = TokenDataset.Create(documents, encoder, r.GetValue(validation));
                console.Error.WriteLine($"data: {documents.Count} documents, {dataset.Train.Length:N0} training and {dataset.Validation.Length:N0} validation tokens (vocabulary {encoder.VocabSize})");

                int width = r.GetValue(dim);
                int ffn = r.GetValue(hidden) is > 0 and var h ? h : Math.Max(32, (8 * width / 3 + 31) / 32 * 32);
                var options = new TrainingOptions
                {
                    Steps = r.GetValue(steps), BatchSize = r.GetValue(batch), ContextLength = r.GetValue(context),
                    GradientAccumulation = r.GetValue(accumulate), PeakLearningRate = r.GetValue(rate), MinimumLearningRate = r.GetValue(minRate),
                    WarmupSteps = r.GetValue(warmup), WeightDecay = r.GetValue(weightDecay), GradientClip = r.GetValue(clip),
                    AttentionDropout = r.GetValue(dropout), ResidualDropout = r.GetValue(dropout), EvalInterval = r.GetValue(evalEvery),
                    Patience = r.GetValue(patience), Seed = (ulong)r.GetValue(seed), Threads = r.GetValue(threads), CheckpointPath = checkpointPath,
                    Precision = trainingPrecision,
                };
                Trainer trainer;
                var history = new LossHistory();
                string historyPath = Path.Combine(outDir, "loss.csv");
                if (r.GetValue(resume))
                {
                    if (!File.Exists(checkpointPath)) throw new CliException($"--resume: no checkpoint at {checkpointPath}");
                    trainer = Checkpoint.Resume(checkpointPath, dataset, options);
                    console.Error.WriteLine($"resumed at step {trainer.Step}");
                    if (File.Exists(historyPath))
                    {
                        history = LossHistory.ReadCsv(historyPath);
                        history.DropAfter(trainer.Step);
                    }
                }
                else if (r.GetValue(initFrom) is { } initial)
                {
                    var model = Checkpoint.LoadModel(LoomCli.RequireInputFile(initial, "--init-from checkpoint"));
                    if (model.Shape.VocabSize != encoder.VocabSize)
                        throw new CliException($"--init-from: the checkpoint's vocabulary ({model.Shape.VocabSize}) differs from the tokenizer's ({encoder.VocabSize})");
                    trainer = new Trainer(model, dataset, options);
                    console.Error.WriteLine($"initialized from {initial}");
                }
                else
                {
                    var shape = new ModelShape
                    {
                        VocabSize = encoder.VocabSize, Dim = width, Layers = r.GetValue(layers), Heads = r.GetValue(heads),
                        KvHeads = r.GetValue(kvHeads), Hidden = ffn, Context = r.GetValue(context),
                    };
                    var model = new Decoder(shape);
                    model.Initialize((ulong)r.GetValue(seed));
                    trainer = new Trainer(model, dataset, options);
                }
                console.Error.WriteLine($"model: {trainer.Model.Parameters.Length:N0} parameters ({trainer.Model.Shape})");
                console.Error.WriteLine($"activation memory: {trainer.Model.ActivationBytes(options.BatchSize, options.ContextLength) / (1024.0 * 1024):F1} MiB " +
                    $"per batch of {options.BatchSize} × {options.ContextLength} ({trainingPrecision.ToString().ToLowerInvariant()})");
                string chartPath = Path.Combine(outDir, "loss.png");
                void SaveHistory()
                {
                    history.WriteCsv(historyPath);
                    LossCurve.Render(history).Save(chartPath);
                }
                Train(trainer, options, console.Error, history, SaveHistory);
                SaveHistory();
                console.Error.WriteLine($"wrote {historyPath} and {chartPath}");

                string modelPath = Path.Combine(outDir, "model.gguf");
                GgufExport.Write(modelPath, trainer.Model, encoder, exportPrecision);
                console.Error.WriteLine($"wrote {modelPath}");
                return 0;
            }
            finally
            {
                tokenizerFile?.Dispose();
            }
        }));
        return command;
    }

    /// <summary>Runs the trainer, logging progress and recording every loss; the history is saved at each validation.</summary>
    private static void Train(Trainer trainer, TrainingOptions options, TextWriter log, LossHistory history, Action saveHistory)
    {
        var clock = Stopwatch.StartNew();
        long firstStep = trainer.Step;
        long tokens = 0;
        double lastValidation = double.NaN;
        trainer.Run(step =>
        {
            tokens += step.Tokens;
            history.AddStep(step.Step, step.Loss, step.LearningRate);
            double seconds = clock.Elapsed.TotalSeconds;
            double perSecond = tokens / Math.Max(seconds, 1e-9);
            double eta = (options.Steps - step.Step) * seconds / Math.Max(1, step.Step - firstStep);
            // before the first validation there is no validation loss to show (not NaN)
            string validation = double.IsNaN(lastValidation) ? "–" : lastValidation.ToString("F4");
            log.WriteLine($"step {step.Step}/{options.Steps}  loss {step.Loss:F4}  val {validation}  lr {step.LearningRate:E2}  " +
                          $"{perSecond:N0} tok/s  ETA {TimeSpan.FromSeconds(eta):hh\\:mm\\:ss}");
        }, evaluation =>
        {
            lastValidation = evaluation.ValidationLoss;
            history.AddValidation(evaluation.Step, evaluation.ValidationLoss);
            saveHistory();
            log.WriteLine($"validation at step {evaluation.Step}: loss {evaluation.ValidationLoss:F4}, perplexity {evaluation.Perplexity:F2}" +
                          (evaluation.Improved ? " (best)" : "") + (evaluation.StopEarly ? "; stopping early" : ""));
        });
    }
}
