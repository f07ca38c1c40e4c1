namespace Loom.Tests;

/// <summary>
/// Checks that repeated work allocates nothing once warm. The runtime's one-time work (on-stack replacement of a hot
/// loop, tiering, an event created the first time a wait blocks, the thread pool's queues growing) can allocate on the
/// measuring thread in an early round; an allocation per call shows in every round, so the last of up to five rounds
/// must be zero.
/// </summary>
internal static class SteadyStateAllocation
{
    public static void AssertNone(string what, Action round)
    {
        var rounds = new List<long>();
        for (int i = 0; i < 5 && (rounds.Count == 0 || rounds[^1] != 0); i++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            round();
            rounds.Add(GC.GetAllocatedBytesForCurrentThread() - before);
        }
        Assert.True(rounds[^1] == 0, $"every round of {what} allocated: {string.Join(", ", rounds)} bytes");
    }
}
