package initproc

import (
	"fmt"
	"reflect"
	"testing"
)

// fill sets every field reachable from v (a pointer) to a distinct
// non-zero value: a field the wire encoding forgets then fails the round
// trip below instead of arriving as its zero value.
func fill(v reflect.Value, n *int) {
	*n++
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), n)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), n)
			}
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := range 2 {
			fill(v.Index(i), n)
		}
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for range 2 {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			fill(k, n)
			fill(e, n)
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	case reflect.String:
		v.SetString(fmt.Sprintf("s%d", *n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(*n % 100))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(*n % 100))
	default:
		panic(fmt.Sprintf("fill: unhandled kind %s", v.Kind()))
	}
}

// TestEveryFieldRoundTrips guards the hand-written encoding against a
// field added to a message type but not to wire.go.
func TestEveryFieldRoundTrips(t *testing.T) {
	var n int
	var hm HostMsg
	fill(reflect.ValueOf(&hm).Elem(), &n)
	hm.Config.Protocol = ProtocolVersion
	var got HostMsg
	if err := got.DecodeWire(hm.AppendWire(nil)); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !reflect.DeepEqual(got, hm) {
		t.Errorf("host message changed on the wire:\n got %+v\nwant %+v", got, hm)
	}
	var im InitMsg
	fill(reflect.ValueOf(&im).Elem(), &n)
	var goti InitMsg
	if err := goti.DecodeWire(im.AppendWire(nil)); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !reflect.DeepEqual(goti, im) {
		t.Errorf("init message changed on the wire:\n got %+v\nwant %+v", goti, im)
	}
}
