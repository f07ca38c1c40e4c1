using System.Diagnostics;
using Loom.Inference;
using Loom.Inference.Generation;
using Loom.Inference.Sampling;

namespace Loom.Server.Engine;

/// <summary>
/// Continuous batching: one thread owns the <see cref="BatchedInference"/> and, each step, advances every running
/// sequence together — a fixed-size chunk of prompt for those still prefilling (within a per-step prompt budget), the
/// last sampled token for the others.
/// Waiting sequences take a slot as soon as one frees up; a cancelled sequence gives its slot back before the next
/// step. Chunk boundaries depend only on the sequence itself, so its output is the same alone or among others.
/// </summary>
public sealed class BatchScheduler : IDisposable
{
    private readonly BatchedInference _batch;
    private readonly ITokenCodec _tokenizer;
    private readonly ServerMetrics _metrics;
    private readonly int _queueCapacity;
    private readonly int _prefillChunk;
    private readonly int _prefillTokensPerStep;
    private int _firstSlot;
    private readonly object _gate = new();
    private readonly Queue<SequenceRequest> _waiting = new();
    private readonly ActiveSequence?[] _slots;
    private readonly Stack<int> _freeSlots = new();
    private readonly float[] _logits;
    private readonly BatchEntry[] _entries;
    private readonly ActiveSequence[] _entrySequences;
    private readonly Thread _thread;
    private bool _stopping;

    /// <param name="prefillChunk">Prompt tokens a prefilling sequence evaluates per step.</param>
    /// <param name="prefillTokensPerStep">Prompt tokens evaluated per step across all sequences (at least one chunk),
    /// so that many new prompts at once do not stall the sequences that are decoding.</param>
    public BatchScheduler(BatchedInference batch, ITokenCodec tokenizer, ServerMetrics metrics, int queueCapacity, int prefillChunk = 64, int prefillTokensPerStep = 256)
    {
        _batch = batch ?? throw new ArgumentNullException(nameof(batch));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _metrics = metrics ?? throw new ArgumentNullException(nameof(metrics));
        ArgumentOutOfRangeException.ThrowIfNegative(queueCapacity);
        ArgumentOutOfRangeException.ThrowIfLessThan(prefillChunk, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(prefillTokensPerStep, prefillChunk);
        _queueCapacity = queueCapacity;
        _prefillChunk = prefillChunk;
        _prefillTokensPerStep = prefillTokensPerStep;
        int slots = batch.MaxSequences;
        _slots = new ActiveSequence?[slots];
        for (int i = slots - 1; i >= 0; i--) _freeSlots.Push(i);
        _logits = new float[(long)slots * batch.Model.Config.VocabSize];
        _entries = new BatchEntry[slots];
        _entrySequences = new ActiveSequence[slots];
        _thread = new Thread(Run) { IsBackground = true, Name = "loom-scheduler" };
        _thread.Start();
    }

    public int ContextSize => _batch.ContextSize;
    public int VocabSize => _batch.Model.Config.VocabSize;
    public int MaxSequences => _batch.MaxSequences;

    /// <summary>
    /// Queues sequences together (all or none): false when they would not fit in the free slots plus the bounded queue.
    /// </summary>
    public bool TrySubmit(IReadOnlyList<SequenceRequest> requests)
    {
        ArgumentNullException.ThrowIfNull(requests);
        foreach (var r in requests)
            if (r.PromptTokens.Length >= ContextSize) throw new PromptTooLongException(r.PromptTokens.Length, ContextSize);
        // Wake the loop when a request is cancelled so that it leaves the queue or its slot promptly.
        foreach (var r in requests) r.WakeOnCancel(Wake);
        lock (_gate)
        {
            int room = _freeSlots.Count + _queueCapacity - _waiting.Count;
            if (_stopping || requests.Count > room)
            {
                foreach (var r in requests) r.Complete(null);
                ObjectDisposedException.ThrowIf(_stopping, this);
                _metrics.CountRejected();
                return false;
            }
            foreach (var r in requests)
            {
                r.QueuedAt = Stopwatch.GetTimestamp();
                _waiting.Enqueue(r);
            }
            _metrics.SetQueue(_waiting.Count);
            Monitor.Pulse(_gate);
        }
        return true;
    }

    private void Wake()
    {
        lock (_gate) Monitor.Pulse(_gate);
    }

    private void Run()
    {
        while (true)
        {
            try
            {
                if (!Step()) break;
            }
            catch (Exception e)
            {
                // A failure outside any one sequence's evaluation ends the running sequences, never the loop.
                FailRunning(e);
            }
        }
        FailRunning(new ObjectDisposedException(nameof(BatchScheduler), "the server is shutting down"));
        lock (_gate)
            while (_waiting.TryDequeue(out var r)) r.Complete(new ObjectDisposedException(nameof(BatchScheduler), "the server is shutting down"));
    }

    /// <summary>One batched step; false once the scheduler is stopping.</summary>
    private bool Step()
    {
        int count;
        lock (_gate)
        {
            while (!_stopping && _waiting.Count == 0 && RunningCount() == 0) Monitor.Wait(_gate);
            if (_stopping) return false;
            DropCancelled();
            Admit();
            count = CollectEntries();
            _metrics.SetQueue(_waiting.Count);
        }
        ReportOccupancy();
        if (count == 0) return true;
        try
        {
            _batch.Evaluate(_entries.AsSpan(0, count), _logits);
        }
        catch (Exception e)
        {
            for (int i = 0; i < count; i++) Fail(_entrySequences[i], e);
            ReportOccupancy();
            return true;
        }
        for (int i = 0; i < count; i++) Advance(_entrySequences[i], i);
        ReportOccupancy();
        return true;
    }

    private void FailRunning(Exception e)
    {
        lock (_gate)
        {
            foreach (var s in _slots)
            {
                if (s is null) continue;
                try
                {
                    Fail(s, e);
                }
                catch (Exception)
                {
                    // The slot could not be cleared; it stays out of use rather than serving a stale cache.
                }
            }
        }
        ReportOccupancy();
    }

    private int RunningCount() => _slots.Length - _freeSlots.Count;

    private void DropCancelled()
    {
        foreach (var s in _slots)
            if (s is not null && s.Request.Cancellation.IsCancellationRequested)
            {
                s.Request.Complete(new OperationCanceledException(s.Request.Cancellation));
                Release(s);
                _metrics.CountCancelled();
            }
        if (_waiting.Any(r => r.Cancellation.IsCancellationRequested))
        {
            var kept = _waiting.Where(r => !r.Cancellation.IsCancellationRequested).ToArray();
            foreach (var r in _waiting.Where(r => r.Cancellation.IsCancellationRequested))
            {
                r.Complete(new OperationCanceledException(r.Cancellation));
                _metrics.CountCancelled();
            }
            _waiting.Clear();
            foreach (var r in kept) _waiting.Enqueue(r);
        }
    }

    private void Admit()
    {
        while (_freeSlots.Count > 0 && _waiting.TryDequeue(out var request))
        {
            int slot = _freeSlots.Pop();
            try
            {
                _slots[slot] = new ActiveSequence(request, slot, _tokenizer, VocabSize);
            }
            catch (Exception e)
            {
                _freeSlots.Push(slot);
                request.Complete(e);
                continue;
            }
            _metrics.CountPromptTokens(request.PromptTokens.Length);
        }
    }

    private int CollectEntries()
    {
        // Prompt tokens fill what the decoding sequences leave of one forward step (the batch splits larger calls,
        // reading the weights again), but always at least one chunk so that prefill progresses.
        int decoding = 0;
        foreach (var s in _slots) if (s is not null && s.Prefilled == s.Request.PromptTokens.Length) decoding++;
        int prefillBudget = Math.Min(_prefillTokensPerStep, Math.Max(_prefillChunk, _batch.MaxTokensPerStep - decoding));
        int fullBudget = prefillBudget, count = 0;
        // Start from a different slot each step so that prefill waiting for the budget takes turns.
        _firstSlot = (_firstSlot + 1) % _slots.Length;
        for (int k = 0; k < _slots.Length; k++)
        {
            var s = _slots[(_firstSlot + k) % _slots.Length];
            if (s is null) continue;
            ReadOnlyMemory<int> tokens;
            if (s.Prefilled < s.Request.PromptTokens.Length)
            {
                int n = Math.Min(_prefillChunk, s.Request.PromptTokens.Length - s.Prefilled);
                // A chunk never shrinks to fit (results depend only on chunk boundaries); past the budget it waits a step.
                if (n > prefillBudget && prefillBudget < fullBudget) continue;
                prefillBudget -= n;
                tokens = s.Request.PromptTokens.AsMemory(s.Prefilled, n);
                s.Prefilled += n;
            }
            else
            {
                s.Next[0] = s.Stream.LastToken;
                tokens = s.Next;
            }
            _entries[count] = new BatchEntry(s.Slot, tokens);
            _entrySequences[count++] = s;
        }
        return count;
    }

    private void Advance(ActiveSequence s, int entry)
    {
        if (s.Prefilled < s.Request.PromptTokens.Length) return;
        if (s.Stream.IsFinished)
        {
            // Nothing to sample (a zero token limit): the prompt was only evaluated.
            Finish(s, "", null);
            return;
        }
        var logits = _logits.AsSpan(entry * VocabSize, VocabSize);
        string text;
        try
        {
            text = s.Stream.Next(logits);
        }
        catch (Exception e)
        {
            Fail(s, e);
            return;
        }
        int token = s.Stream.LastToken;
        bool endOfGeneration = s.Stream.FinishReason == FinishReason.EndOfGeneration;
        TokenLogprob? logprob = s.Request.TopLogprobs is { } top && !endOfGeneration ? Logprobs.Of(logits, token, top) : null;

        if (!endOfGeneration)
        {
            long now = Stopwatch.GetTimestamp();
            if (s.LastTokenAt == 0)
            {
                s.Request.FirstTokenAt = now;
                _metrics.ObserveTimeToFirstToken(Stopwatch.GetElapsedTime(s.Request.QueuedAt, now));
            }
            else _metrics.ObserveInterToken(Stopwatch.GetElapsedTime(s.LastTokenAt, now));
            s.LastTokenAt = now;
            _metrics.CountGeneratedToken();
        }

        if (!s.Stream.IsFinished && _batch.Length(s.Slot) >= ContextSize) text += s.Stream.End(FinishReason.Length);
        if (s.Stream.IsFinished) Finish(s, text, logprob);
        else s.Request.Writer.TryWrite(new SequenceOutput(text, logprob));
    }

    private void Finish(ActiveSequence s, string text, TokenLogprob? logprob)
    {
        s.Request.FinishedAt = Stopwatch.GetTimestamp();
        if (text.Length > 0 || logprob is not null) s.Request.Writer.TryWrite(new SequenceOutput(text, logprob));
        s.Request.Writer.TryWrite(new SequenceOutput("", null, s.Stream.FinishReason, s.Stream.Tokens.Count));
        s.Request.Complete(null);
        lock (_gate) Release(s);
    }

    private void Fail(ActiveSequence s, Exception e)
    {
        s.Request.Writer.TryWrite(new SequenceOutput("", null, Error: e));
        s.Request.Complete(null);
        lock (_gate) Release(s);
    }

    // Caller holds _gate.
    private void Release(ActiveSequence s)
    {
        if (_slots[s.Slot] != s) return;
        _slots[s.Slot] = null;
        try
        {
            _batch.Truncate(s.Slot, 0);
        }
        finally
        {
            _freeSlots.Push(s.Slot);
        }
    }

    private void ReportOccupancy()
    {
        long cached = 0;
        int running;
        lock (_gate)
        {
            running = RunningCount();
            for (int i = 0; i < _slots.Length; i++) if (_slots[i] is not null) cached += _batch.Length(i);
        }
        _metrics.SetOccupancy(running, cached, (long)_slots.Length * ContextSize);
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_stopping) return;
            _stopping = true;
            Monitor.PulseAll(_gate);
        }
        _thread.Join();
    }

    private sealed class ActiveSequence
    {
        public ActiveSequence(SequenceRequest request, int slot, ITokenCodec tokenizer, int vocabSize)
        {
            Request = request;
            Slot = slot;
            var sampler = new Sampler(request.Options.Sampling, vocabSize);
            sampler.Accept(request.PromptTokens);
            Stream = new GenerationStream(tokenizer, sampler, request.Options);
        }

        public SequenceRequest Request { get; }
        public int Slot { get; }
        public GenerationStream Stream { get; }
        public int Prefilled { get; set; }
        public int[] Next { get; } = new int[1];
        public long LastTokenAt { get; set; }
    }
}
