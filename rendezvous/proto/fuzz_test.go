package proto

import (
	"bytes"
	"reflect"
	"testing"
)

// addSeeds adds every sample message of type typ (whole frames if typ is 0).
func addSeeds(f *testing.F, typ Type) {
	for _, m := range sampleMessages() {
		b, err := AppendMessage(nil, m)
		if err != nil {
			f.Fatal(err)
		}
		if typ == 0 {
			f.Add(b)
		} else if m.FrameType() == typ {
			f.Add(b[HeaderSize:])
		}
	}
}

// checkRoundTrip re-encodes a parsed message and requires that parsing the
// encoding gives the same value and that the encoding is canonical.
func checkRoundTrip(t *testing.T, m Message) {
	t.Helper()
	b1, err := AppendMessage(nil, m)
	if err != nil {
		t.Fatalf("re-encode %s %+v: %v", m.FrameType(), m, err)
	}
	f, n, err := ParseFrame(b1)
	if err != nil || n != len(b1) {
		t.Fatalf("re-parse frame: n=%d err=%v", n, err)
	}
	m2, err := ParseMessage(f)
	if err != nil {
		t.Fatalf("re-parse %s: %v", m.FrameType(), err)
	}
	if !reflect.DeepEqual(m, m2) {
		t.Fatalf("round trip changed %s:\n%+v\n%+v", m.FrameType(), m, m2)
	}
	b2, err := AppendMessage(nil, m2)
	if err != nil || !bytes.Equal(b1, b2) {
		t.Fatalf("encoding not canonical: %x vs %x (%v)", b1, b2, err)
	}
}

func FuzzParseFrame(f *testing.F) {
	addSeeds(f, 0)
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := ParseFrame(b)
		if err != nil {
			return
		}
		if n < HeaderSize || n > len(b) || n-HeaderSize != len(fr.Body) || len(fr.Body) > MaxBody {
			t.Fatalf("bad frame bounds n=%d len=%d body=%d", n, len(b), len(fr.Body))
		}
		again, err := AppendFrame(nil, fr.Type, fr.Body)
		if err != nil || !bytes.Equal(again, b[:n]) {
			t.Fatalf("frame round trip: %x vs %x (%v)", again, b[:n], err)
		}
		if m, err := ParseMessage(fr); err == nil {
			checkRoundTrip(t, m)
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	addSeeds(f, 0)
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := ReadFrame(bytes.NewReader(b), 512)
		if err != nil {
			return
		}
		if len(fr.Body) > 512 {
			t.Fatalf("body %d over limit", len(fr.Body))
		}
		pf, n, err := ParseFrame(b)
		if err != nil || n != HeaderSize+len(fr.Body) || !bytes.Equal(pf.Body, fr.Body) || pf.Type != fr.Type {
			t.Fatalf("ReadFrame and ParseFrame disagree: %v", err)
		}
	})
}

func fuzzBody[T any, PT interface {
	*T
	Message
}](f *testing.F, typ Type, parse func([]byte) (T, error)) {
	addSeeds(f, typ)
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := parse(b)
		if err != nil {
			return
		}
		checkRoundTrip(t, PT(&v))
	})
}

func FuzzParseRegister(f *testing.F)   { fuzzBody(f, TypeRegister, ParseRegister) }
func FuzzParseRegistered(f *testing.F) { fuzzBody(f, TypeRegistered, ParseRegistered) }
func FuzzParseLookup(f *testing.F)     { fuzzBody(f, TypeLookup, ParseLookup) }
func FuzzParseLookupResult(f *testing.F) {
	fuzzBody(f, TypeLookupResult, ParseLookupResult)
}
func FuzzParseSetHostname(f *testing.F) { fuzzBody(f, TypeSetHostname, ParseSetHostname) }
func FuzzParseTrustSend(f *testing.F)   { fuzzBody(f, TypeTrustSend, ParseTrustSend) }
func FuzzParseDeliver(f *testing.F)     { fuzzBody(f, TypeDeliver, ParseDeliver) }
func FuzzParseAck(f *testing.F)         { fuzzBody(f, TypeAck, ParseAck) }
func FuzzParseError(f *testing.F)       { fuzzBody(f, TypeError, ParseError) }
func FuzzParseConnect(f *testing.F)     { fuzzBody(f, TypeConnect, ParseConnect) }
func FuzzParseIntroduce(f *testing.F)   { fuzzBody(f, TypeIntroduce, ParseIntroduce) }
func FuzzParseNATReport(f *testing.F)   { fuzzBody(f, TypeNATReport, ParseNATReport) }

func FuzzParseNetworkCreate(f *testing.F) {
	fuzzBody(f, TypeNetworkCreate, ParseNetworkCreate)
}
func FuzzParseNetworkInfo(f *testing.F) { fuzzBody(f, TypeNetworkInfo, ParseNetworkInfo) }
func FuzzParseNetworkSend(f *testing.F) { fuzzBody(f, TypeNetworkSend, ParseNetworkSend) }
func FuzzParseNetworkMembers(f *testing.F) {
	fuzzBody(f, TypeNetworkMembers, ParseNetworkMembers)
}
func FuzzParseNetworkState(f *testing.F) { fuzzBody(f, TypeNetworkState, ParseNetworkState) }
