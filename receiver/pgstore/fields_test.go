package pgstore

import (
	"encoding/json"
	"reflect"
	"testing"
)

var fieldSeeds = []string{
	`{"id":"a","time":"2026-12-01T08:00:00Z","action":"phi.view","outcome":"success","actor":{"user":"u1","role":"r"},"patient":"pt-1","study":["st-1","st-2"],"count":3,"x":[1,2.5e3,-0,true,false,null,{"a":{}}]}`,
	`{}`, ` { "time" : null , "actor" : null , "study" : null } `, `[]`, `"x"`, `null`, `{"study":[]}`, `{"study":[null,"a"]}`,
	`{"Action":"x"}`, `{"ACTOR":{"user":"u"}}`, `{"actor":{"User":"u"}}`, `{"action":"a","action":"b"}`,
	`{"action":"a\u00e9"}`, `{"action":"é"}`, "{\"action\":\"\xff\"}", `{"action":1}`, `{"study":"x"}`, `{"study":[1]}`,
	`{"actor":"x"}`, `{"a":"\q"}`, `{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":tru}`, `{"a":1}x`, `{"a" 1}`, `{"a":1,}`,
	`{"\u0061ction":"x"}`, `{"actor":{"user":"u","user":"v"}}`, `{"actor":{},"actor":{"user":"v"}}`, "{\"a\":\"\x01\"}",
	`{"ſtudy":["x"]}`, `{"time":"2026-12-01T08:00:00.123456789Z","message":"he said \"hi\"\n"}`,
}

func TestExtractFieldsMatchesEncodingJSON(t *testing.T) {
	for _, s := range fieldSeeds {
		checkFields(t, []byte(s))
	}
}

func FuzzExtractFields(f *testing.F) {
	for _, s := range fieldSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkFields(t, b) })
}

func checkFields(t *testing.T, b []byte) {
	t.Helper()
	var want eventFields
	wantOK := json.Unmarshal(b, &want) == nil
	got, ok := extractFields(b)
	if ok != wantOK {
		t.Fatalf("%q: ok=%v, encoding/json ok=%v", b, ok, wantOK)
	}
	if ok && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: got %+v, encoding/json %+v", b, got, want)
	}
}
