package query

import "cmp"

// maxDecimalExp bounds the exponent of a numeric literal or value (1e…),
// well past numeric's own range (10^131072), so that digit positions stay
// far from int64 overflow.
const maxDecimalExp = 1 << 30

// Ranks of decimal values, in PostgreSQL's order.
const (
	decNegInf int8 = iota - 1
	decFinite
	decPosInf
	decNaN
)

// decimal is an exact decimal number whose digits stay where they were
// parsed from: the significant digits are hi followed by lo (the integer
// and fraction parts of the text, so that "19.90" needs no copy), with no
// leading zero; top is the power of ten of the first. Zero has no digits.
type decimal struct {
	rank   int8
	neg    bool
	hi, lo []byte
	top    int64
}

func (d *decimal) digits() int { return len(d.hi) + len(d.lo) }

func (d *decimal) digit(k int) byte {
	if k < len(d.hi) {
		return d.hi[k]
	}
	if k -= len(d.hi); k < len(d.lo) {
		return d.lo[k]
	}
	return '0'
}

// finiteDecimal returns the decimal of a sign, integer digits, fraction
// digits and exponent.
func finiteDecimal(neg bool, ip, fp []byte, exp int64) decimal {
	for len(ip) > 0 && ip[0] == '0' {
		ip = ip[1:]
	}
	d := decimal{rank: decFinite}
	if len(ip) > 0 {
		d.hi, d.lo, d.top = ip, fp, int64(len(ip))-1+exp
	} else {
		z := 0
		for z < len(fp) && fp[z] == '0' {
			z++
		}
		d.hi, d.top = fp[z:], exp-int64(z)-1
	}
	d.neg = neg && d.digits() > 0
	return d
}

// parseDecimal parses a number as numeric_in reads one: an optional sign,
// digits with an optional decimal point (at least one digit), an optional
// exponent; or NaN, Infinity, -Infinity (any case, inf for short). The
// decimal's digits point into s.
func parseDecimal(s []byte) (decimal, bool) {
	i, neg := 0, false
	if len(s) > 0 && (s[0] == '-' || s[0] == '+') {
		neg, i = s[0] == '-', 1
	}
	rest := s[i:]
	switch {
	case equalFold(rest, "infinity") || equalFold(rest, "inf"):
		if neg {
			return decimal{rank: decNegInf}, true
		}
		return decimal{rank: decPosInf}, true
	case i == 0 && equalFold(rest, "nan"):
		return decimal{rank: decNaN}, true
	}
	j := skipDigits(s, i)
	ip := s[i:j]
	var fp []byte
	if j < len(s) && s[j] == '.' {
		k := skipDigits(s, j+1)
		fp = s[j+1 : k]
		j = k
	}
	if len(ip)+len(fp) == 0 {
		return decimal{}, false
	}
	var exp int64
	if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
		j++
		eneg := false
		if j < len(s) && (s[j] == '-' || s[j] == '+') {
			eneg = s[j] == '-'
			j++
		}
		k := skipDigits(s, j)
		if k == j {
			return decimal{}, false
		}
		for _, c := range s[j:k] {
			exp = exp*10 + int64(c-'0')
			if exp > maxDecimalExp {
				return decimal{}, false
			}
		}
		if eneg {
			exp = -exp
		}
		j = k
	}
	if j != len(s) {
		return decimal{}, false
	}
	return finiteDecimal(neg, ip, fp, exp), true
}

// parseMoney parses money's output in a locale with '.' as the decimal
// point ("$1,234.56", "-$1,234.56", "($1.00)", "1,234.56 EUR"): a currency
// symbol before or after the number, ',' between digit groups. The digits
// are copied into scratch without the separators.
func parseMoney(s []byte, scratch *[moneyDigits]byte) (decimal, bool) {
	neg := false
	i, j := 0, len(s)
	if j >= 2 && s[0] == '(' && s[j-1] == ')' {
		neg, i, j = true, 1, j-1
	}
	for ; i < j && (s[i] < '0' || s[i] > '9'); i++ {
		switch s[i] {
		case '-':
			if neg {
				return decimal{}, false
			}
			neg = true
		case '.', ',':
			return decimal{}, false
		}
	}
	for ; j > i && (s[j-1] < '0' || s[j-1] > '9'); j-- {
		switch s[j-1] {
		case '-':
			if neg {
				return decimal{}, false
			}
			neg = true
		case '.', ',':
			return decimal{}, false
		}
	}
	if i == j {
		return decimal{}, false
	}
	n, point := 0, -1
	for k := i; k < j; k++ {
		switch c := s[k]; {
		case c >= '0' && c <= '9':
			if n == len(scratch) {
				return decimal{}, false
			}
			scratch[n] = c
			n++
		case c == ',' && point < 0 && k+1 < j && s[k+1] >= '0' && s[k+1] <= '9':
		case c == '.' && point < 0:
			point = n
		default:
			return decimal{}, false
		}
	}
	if point < 0 {
		point = n
	}
	return finiteDecimal(neg, scratch[:point], scratch[point:n], 0), true
}

// compareDecimal orders decimals as PostgreSQL orders numeric:
// -Infinity, the finite values, Infinity, NaN (equal to itself).
func compareDecimal(a, b *decimal) int {
	if a.rank != b.rank {
		return cmp.Compare(a.rank, b.rank)
	}
	if a.rank != decFinite {
		return 0
	}
	as, bs := decimalSign(a), decimalSign(b)
	if as != bs || as == 0 {
		return cmp.Compare(as, bs)
	}
	m := 0
	if a.top != b.top {
		m = cmp.Compare(a.top, b.top)
	} else {
		for k, n := 0, max(a.digits(), b.digits()); k < n; k++ {
			if x, y := a.digit(k), b.digit(k); x != y {
				m = cmp.Compare(x, y)
				break
			}
		}
	}
	return m * as
}

func decimalSign(d *decimal) int {
	switch {
	case d.digits() == 0:
		return 0
	case d.neg:
		return -1
	}
	return 1
}
