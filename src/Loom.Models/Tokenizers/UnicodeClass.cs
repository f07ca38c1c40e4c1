using System.Globalization;

namespace Loom.Models.Tokenizers;

/// <summary>The coarse Unicode classes llama.cpp's pre-tokenizers test (unicode_cpt_flags): one general category group plus whitespace.</summary>
[Flags]
internal enum UnicodeClass : byte
{
    None = 0, // outside the text being split (llama.cpp's out-of-range sentinel)
    Undefined = 1 << 0,
    Number = 1 << 1,
    Letter = 1 << 2,
    Separator = 1 << 3,
    Mark = 1 << 4,
    Punctuation = 1 << 5,
    Symbol = 1 << 6,
    Control = 1 << 7,
}

internal static class UnicodeClasses
{
    private static readonly UnicodeClass[] Bmp = BuildBmp();

    public static UnicodeClass Of(int codepoint) =>
        codepoint < 0x10000 ? Bmp[codepoint] : codepoint <= 0x10FFFF ? FromCategory(CharUnicodeInfo.GetUnicodeCategory(codepoint)) : UnicodeClass.None;

    /// <summary>The Unicode White_Space property, which is what llama.cpp's \s tests (Python's \s minus U+001C..U+001F).</summary>
    public static bool IsWhitespace(int c) =>
        c is >= 0x09 and <= 0x0D or 0x20 or 0x85 or 0xA0 or 0x1680 or >= 0x2000 and <= 0x200A or 0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000;

    private static UnicodeClass[] BuildBmp()
    {
        var table = new UnicodeClass[0x10000];
        for (int c = 0; c < table.Length; c++) table[c] = FromCategory(CharUnicodeInfo.GetUnicodeCategory(c));
        return table;
    }

    private static UnicodeClass FromCategory(UnicodeCategory category) => category switch
    {
        UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
            or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => UnicodeClass.Letter,
        UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark => UnicodeClass.Mark,
        UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => UnicodeClass.Number,
        UnicodeCategory.SpaceSeparator or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator => UnicodeClass.Separator,
        UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation or UnicodeCategory.OpenPunctuation
            or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation or UnicodeCategory.FinalQuotePunctuation
            or UnicodeCategory.OtherPunctuation => UnicodeClass.Punctuation,
        UnicodeCategory.MathSymbol or UnicodeCategory.CurrencySymbol or UnicodeCategory.ModifierSymbol or UnicodeCategory.OtherSymbol => UnicodeClass.Symbol,
        UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate or UnicodeCategory.PrivateUse => UnicodeClass.Control,
        _ => UnicodeClass.Undefined,
    };
}
