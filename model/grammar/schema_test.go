package grammar

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestFromJSONSchemaRefuses(t *testing.T) {
	for _, tc := range []struct {
		schema string
		want   error
		msg    string // a substring of the message
	}{
		{`{"type":"object","properties":{"zip":{"type":"string","pattern":"^[0-9]{5}$"}}}`, ErrUnsupported, `unsupported keyword "pattern" at #/properties/zip`},
		{`{"type":"string","format":"date-time"}`, ErrUnsupported, `unsupported keyword "format" at #`},
		{`{"type":"string","minLength":1}`, ErrUnsupported, `"minLength"`},
		{`{"type":"string","maxLength":9}`, ErrUnsupported, `"maxLength"`},
		{`{"type":"integer","minimum":0}`, ErrUnsupported, `"minimum"`},
		{`{"type":"integer","maximum":9}`, ErrUnsupported, `"maximum"`},
		{`{"type":"number","exclusiveMinimum":0}`, ErrUnsupported, `"exclusiveMinimum"`},
		{`{"type":"number","exclusiveMaximum":0}`, ErrUnsupported, `"exclusiveMaximum"`},
		{`{"type":"number","multipleOf":2}`, ErrUnsupported, `"multipleOf"`},
		{`{"type":"object","patternProperties":{"^a":{}}}`, ErrUnsupported, `"patternProperties"`},
		{`{"type":"object","propertyNames":{"maxLength":3}}`, ErrUnsupported, `"propertyNames"`},
		{`{"type":"object","dependentRequired":{"a":["b"]}}`, ErrUnsupported, `"dependentRequired"`},
		{`{"type":"object","dependentSchemas":{"a":{}}}`, ErrUnsupported, `"dependentSchemas"`},
		{`{"type":"object","minProperties":1}`, ErrUnsupported, `"minProperties"`},
		{`{"if":{"type":"string"},"then":{"const":"a"}}`, ErrUnsupported, `"if"`},
		{`{"not":{"type":"string"}}`, ErrUnsupported, `"not"`},
		{`{"allOf":[{"type":"string"},{"enum":["a"]}]}`, ErrUnsupported, `"allOf" with more than one schema`},
		{`{"type":"object","unevaluatedProperties":false}`, ErrUnsupported, `"unevaluatedProperties"`},
		{`{"type":"array","contains":{"type":"string"}}`, ErrUnsupported, `"contains"`},
		{`{"type":"array","prefixItems":[{"type":"string"}]}`, ErrUnsupported, `"prefixItems"`},
		{`{"type":"array","uniqueItems":true}`, ErrUnsupported, `"uniqueItems"`},
		{`{"type":"array","items":[{"type":"string"}]}`, ErrUnsupported, `array form of "items"`},
		{`{"nullable":true,"type":"string"}`, ErrUnsupported, `unsupported keyword "nullable" at #`},
		{`{"$ref":"other.json#/a"}`, ErrUnsupported, `non-local "$ref"`},
		{`{"$ref":"#node"}`, ErrUnsupported, `anchor`},
		{`{"$defs":{"a":{"type":"string"}},"$ref":"#/$defs/a","type":"string"}`, ErrUnsupported, `keyword "type" alongside "$ref"`},
		{`{"type":"object","anyOf":[{"required":["a"]},{"required":["b"]}]}`, ErrUnsupported, `keyword "type" alongside "anyOf"`},
		{`{"enum":["a","b"],"minLength":1}`, ErrUnsupported, `"minLength"`},
		{`{"type":"object","properties":{"a":{}},"enum":[{"a":1}]}`, ErrUnsupported, `keyword "properties" alongside "enum"`},
		{`{"oneOf":[{"type":"string"},{"type":"string","enum":["a"]}]}`, ErrUnsupported, `oneOf alternatives 0 and 1 may overlap`},
		{`{"oneOf":[{"type":"integer"},{"type":"number"}]}`, ErrUnsupported, `may overlap`},
		{`{"oneOf":[{"type":"object","properties":{"k":{"const":"a"}},"required":["k"]},{"type":"object","properties":{"k":{"enum":["b","a"]}},"required":["k"]}]}`, ErrUnsupported, `may overlap`},
		{`{"oneOf":[{"type":"string"},{"properties":{"a":{}}}]}`, ErrUnsupported, `may overlap`}, // untyped: accepts strings too
		{`{"$defs":{"a":{"anyOf":[{"$ref":"#/$defs/a"},{"type":"string"}]}},"$ref":"#/$defs/a"}`, ErrUnsupported, `left-recursive`},
		{`{"type":"array","maxItems":100000000}`, ErrUnsupported, `"maxItems" above`},

		{`{"type":"object",`, ErrSchema, ``},
		{`[]`, ErrSchema, `a schema must be an object or a boolean at #`},
		{`{"type":"strin"}`, ErrSchema, `unknown type "strin"`},
		{`{"type":[]}`, ErrSchema, `"type" must not be an empty array`},
		{`{"type":7}`, ErrSchema, `"type" must be a string`},
		{`{"enum":[]}`, ErrSchema, `"enum" must be a non-empty array`},
		{`{"type":"object","properties":[]}`, ErrSchema, `"properties" must be an object`},
		{`{"type":"object","required":"a"}`, ErrSchema, `"required" must be an array of strings`},
		{`{"type":"object","additionalProperties":3}`, ErrSchema, `"additionalProperties"`},
		{`{"type":"array","minItems":-1}`, ErrSchema, `"minItems" must be a non-negative integer`},
		{`{"type":"array","maxItems":1.5}`, ErrSchema, `"maxItems" must be a non-negative integer`},
		{`{"anyOf":[]}`, ErrSchema, `"anyOf" must be a non-empty array`},
		{`{"$ref":"#/$defs/missing"}`, ErrSchema, `unresolvable "$ref"`},
		{`{"$ref":5}`, ErrSchema, `"$ref" must be a string`},
		{`{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}`, ErrSchema, `"$ref" cycle`},
		{`false`, ErrSchema, `admits no document`},
		{`{"type":"string","enum":[1,2]}`, ErrSchema, `admits no document`},
		{`{"type":"array","minItems":3,"maxItems":2}`, ErrSchema, `admits no document`},
		{`{"type":"object","properties":{"a":false},"required":["a"]}`, ErrSchema, `admits no document`},
		{`{"$defs":{"n":{"type":"object","properties":{"next":{"$ref":"#/$defs/n"}},"required":["next"]}},"$ref":"#/$defs/n"}`, ErrSchema, `admits no document`},
		{`{"type":"object","required":["a"],"additionalProperties":false}`, ErrSchema, `admits no document`},
		{`{"type":"object","properties":{"a":{}},"properties":{}}`, ErrSchema, `duplicate key`},
	} {
		g, err := FromJSONSchema([]byte(tc.schema))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v (grammar %v), want %v", tc.schema, err, g != nil, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: message %q does not contain %q", tc.schema, err, tc.msg)
		}
		var se *SchemaError
		if !errors.As(err, &se) || se.Path == "" {
			t.Errorf("%s: %v is not a *SchemaError with a path", tc.schema, err)
		}
	}
}

func TestFromJSONSchemaAccepts(t *testing.T) {
	for _, s := range []string{
		`true`,
		`{}`,
		`{"title":"t","description":"d","default":1,"examples":[1],"$schema":"https://json-schema.org/draft/2020-12/schema","$id":"x","$comment":"c","x-extra":1}`,
		`{"name":"person","strict":true,"schema":{"type":"object","properties":{"a":{"type":"string"}},"required":["a"],"additionalProperties":false}}`,
		`{"type":"json_schema","json_schema":{"name":"p","schema":{"type":"string"},"strict":true}}`,
		`{"type":"json_object"}`,
		`{"allOf":[{"type":"string"}],"description":"one-element allOf"}`,
		`{"definitions":{"a":{"type":"integer"}},"type":"array","items":{"$ref":"#/definitions/a"},"uniqueItems":false}`,
		`{"type":"object","properties":{"self":{"$ref":"#"}}}`,
		`{"oneOf":[{"type":"string"},{"type":"integer"},{"type":"null"}]}`,
		`{"oneOf":[{"const":1},{"const":2},{"enum":["1"]}]}`,
		`{"type":["object","null"],"properties":{"a":{"type":"boolean"}}}`,
		`{"properties":{"a":{"type":"string"}},"required":["a","b"]}`,
		`{"type":"array","items":false}`,
		`{"const":{"k":[1,"x"]}}`,
		// A discriminated union as pydantic writes it.
		`{"$defs":{"Cat":{"title":"Cat","type":"object","properties":{"pet_type":{"const":"cat","title":"Pet Type"},"meows":{"type":"integer"}},"required":["pet_type","meows"]},
		  "Dog":{"title":"Dog","type":"object","properties":{"pet_type":{"enum":["dog"]},"barks":{"type":"number"}},"required":["pet_type","barks"]}},
		  "properties":{"pet":{"oneOf":[{"$ref":"#/$defs/Cat"},{"$ref":"#/$defs/Dog"}],"discriminator":{"propertyName":"pet_type"}},
		  "nick":{"anyOf":[{"type":"string"},{"type":"null"}],"default":null}},"required":["pet"],"title":"Model","type":"object"}`,
		`{"type":"object","properties":{"a/b~c":{"type":"string"}}}`,
	} {
		if _, err := FromJSONSchema([]byte(s)); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	if g, _ := FromJSONSchema([]byte(`{"type":"json_object"}`)); g != AnyJSONObject() {
		t.Error(`{"type":"json_object"} is not the shared AnyJSONObject grammar`)
	}
}

func TestValidate(t *testing.T) {
	person := testSchemas[0].schema
	for _, tc := range []struct {
		name   string
		schema string
		doc    string
		ok     bool
	}{
		{"minimal", person, `{"name":"a","age":1}`, true},
		{"all properties", person, `{"name":"a","age":-1,"email":null,"tags":["x","y"],"address":{"street":"s","zip":"1"},"score":1.5e-3,"ok":true}`, true},
		{"one-space indentation", person, "{\n \"name\": \"a\",\n \"age\": 1\n}", true},
		{"deeper indentation", person, "{\n  \"name\": \"a\",\n  \"age\": 1\n}", false},
		{"leading whitespace", person, "  {\"name\":\"a\",\"age\":1}", true},
		{"trailing whitespace", person, "{\"name\":\"a\",\"age\":1}\n", false},
		{"whitespace run of 2", person, "{" + strings.Repeat(" ", 2) + "\"name\":\"a\",\"age\":1}", true},
		{"whitespace run of 3", person, "{" + strings.Repeat(" ", 3) + "\"name\":\"a\",\"age\":1}", false},
		{"missing required", person, `{"name":"a"}`, false},
		{"required skipped", person, `{"age":1}`, false},
		{"out of order", person, `{"age":1,"name":"a"}`, false},
		{"unknown property", person, `{"name":"a","age":1,"x":1}`, false},
		{"repeated property", person, `{"name":"a","name":"b","age":1}`, false},
		{"integer with fraction", person, `{"name":"a","age":1.5}`, false},
		{"integer with exponent", person, `{"name":"a","age":1e3}`, false},
		{"leading zero", person, `{"name":"a","age":01}`, false},
		{"zero", person, `{"name":"a","age":0}`, true},
		{"negative zero", person, `{"name":"a","age":-0}`, true},
		{"lone minus", person, `{"name":"a","age":-}`, false},
		{"trailing dot", person, `{"name":"a","age":1,"score":1.}`, false},
		{"empty exponent", person, `{"name":"a","age":1,"score":1e}`, false},
		{"exponent sign", person, `{"name":"a","age":1,"score":1E+10}`, true},
		{"19 integer digits", person, `{"name":"a","age":1234567890123456789}`, false},
		{"3 exponent digits", person, `{"name":"a","age":1,"score":1e100}`, false},
		{"too many items", person, `{"name":"a","age":1,"tags":["1","2","3","4"]}`, false},
		{"wrong type", person, `{"name":1,"age":1}`, false},
		{"string or null", person, `{"name":"a","age":1,"email":"e"}`, true},
		{"nested required", person, `{"name":"a","age":1,"address":{"zip":"1"}}`, false},
		{"escapes", person, `{"name":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00","age":1}`, true},
		{"bad escape", person, `{"name":"\x","age":1}`, false},
		{"short unicode escape", person, `{"name":"\u12","age":1}`, false},
		{"raw newline in string", person, "{\"name\":\"a\nb\",\"age\":1}", false},
		{"raw tab in string", person, "{\"name\":\"a\tb\",\"age\":1}", false},
		{"utf-8", person, `{"name":"héllo 日本 😀","age":1}`, true},
		{"invalid utf-8", person, "{\"name\":\"\xff\",\"age\":1}", false},
		{"overlong utf-8", person, "{\"name\":\"\xc0\x80\",\"age\":1}", false},
		{"surrogate in utf-8", person, "{\"name\":\"\xed\xa0\x80\",\"age\":1}", false},
		{"truncated utf-8", person, "{\"name\":\"\xe6\x97\",\"age\":1}", false},
		{"above U+10FFFF", person, "{\"name\":\"\xf4\x90\x80\x80\",\"age\":1}", false},
		{"incomplete", person, `{"name":"a","age":1`, false},
		{"empty", person, ``, false},
		{"two documents", person, `{"name":"a","age":1}{}`, false},

		{"enum", `{"enum":["red","green",12,null]}`, `"green"`, true},
		{"enum number", `{"enum":["red","green",12,null]}`, `12`, true},
		{"enum prefix", `{"enum":["red","green",12,null]}`, `1`, false},
		{"enum other", `{"enum":["red","green",12,null]}`, `"blue"`, false},
		{"enum escaped form", `{"enum":["red"]}`, `"\u0072ed"`, false},
		{"const object", `{"const":{"a":[1,true]}}`, `{"a":[1,true]}`, true},
		{"const object spaced", `{"const":{"a":[1,true]}}`, `{"a": [1,true]}`, false},
		{"top-level number", `{"type":"number"}`, `-12.5e-3`, true},
		{"top-level integer", `{"type":"integer"}`, `42`, true},
		{"any", `{}`, `[{"a":[null,true,false,"x",1.5]},[],{}]`, true},
		{"any literal", `{}`, `nul`, false},
		{"json_object", `{"type":"json_object"}`, `{"a":{"b":[1,2,{"c":null}]},"a":2}`, true},
		{"json_object array", `{"type":"json_object"}`, `[1]`, false},
		{"map", `{"type":"object","additionalProperties":{"type":"integer"}}`, `{"x":1,"y":2}`, true},
		{"map value", `{"type":"object","additionalProperties":{"type":"integer"}}`, `{"x":"1"}`, false},
		{"closed empty", `{"type":"object","additionalProperties":false}`, `{}`, true},
		{"closed empty key", `{"type":"object","additionalProperties":false}`, `{"a":1}`, false},
		{"min items", testSchemas[8].schema, `["a"]`, false},
		{"items in range", testSchemas[8].schema, `["a","b","c"]`, true},
		{"recursive", testSchemas[2].schema, `{"value":1,"children":[{"value":2,"children":[{"value":3}]}]}`, true},
		{"recursive missing", testSchemas[2].schema, `{"value":1,"children":[{"children":[]}]}`, false},
		{"anyOf a", testSchemas[3].schema, `{"a":1}`, true},
		{"anyOf b", testSchemas[3].schema, `{"b":"x"}`, true},
		{"anyOf mixed", testSchemas[3].schema, `{"a":"x"}`, false},
		{"oneOf circle", testSchemas[4].schema, `{"shape":{"kind":"circle","r":2}}`, true},
		{"oneOf wrong field", testSchemas[4].schema, `{"shape":{"kind":"circle","w":2}}`, false},
		{"key prefix of a later key", `{"type":"object","properties":{"ab":{"type":"integer"},"abc":{"type":"integer"}}}`, `{"ab":1,"abc":2}`, true},
		{"key passed, prefix of a later key", `{"type":"object","properties":{"ab":{"type":"integer"},"abc":{"type":"integer"}}}`, `{"ab":1,"ab":2}`, false},
		{"key with escapes", `{"type":"object","properties":{"a\"b\n":{"type":"null"}},"required":["a\"b\n"]}`, `{"a\"b\n":null}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := mustGrammar(t, tc.schema).Validate([]byte(tc.doc))
			if (err == nil) != tc.ok {
				t.Fatalf("Validate(%q) = %v, want ok=%v", tc.doc, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrRejected) {
				t.Fatalf("%v does not wrap ErrRejected", err)
			}
		})
	}
}

// TestManyProperties: an object with many optional properties compiles to a
// key trie linear in its keys, and any in-order subset validates.
func TestManyProperties(t *testing.T) {
	var sb strings.Builder
	sb.WriteString(`{"type":"object","properties":{`)
	for i := range 2000 {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `"p%d":{"type":"integer"}`, i)
	}
	sb.WriteString(`},"required":["p1999"]}`)
	g := mustGrammar(t, sb.String())
	if len(g.lits) > 20000 {
		t.Fatalf("%d trie nodes for 2000 keys", len(g.lits))
	}
	for _, tc := range []struct {
		doc string
		ok  bool
	}{
		{`{"p1999":0}`, true},
		{`{"p0":1,"p17":2,"p1000":3,"p1999":4}`, true},
		{`{"p17":2,"p0":1,"p1999":4}`, false},
		{`{"p0":1}`, false},
	} {
		if err := g.Validate([]byte(tc.doc)); (err == nil) != tc.ok {
			t.Errorf("Validate(%s) = %v, want ok=%v", tc.doc, err, tc.ok)
		}
	}
}
